//! End to end on the local backend: the real `parhelia` CLI, the coordinator it
//! starts, the real `parhelia-agent`, real tmux, and the real Claude Code CLI
//! talking to the scripted Messages API stand-in.

use parhelia_testkit::harness::Harness;
use parhelia_testkit::model_stand_in::ErrorReply;
use parhelia_testkit::{Script, ToolCall, Turn};

fn write_and_bash_script() -> Script {
    Script::new([
        Turn::tool_use([ToolCall::write("hello.txt", "hi\n")]).with_usage(400, 40),
        Turn::tool_use([ToolCall::bash(
            "echo from-bash-$((6 * 7)) > bash.txt; echo from-bash-$((6 * 7))",
        )])
        .with_usage(500, 30),
        Turn::text("Created hello.txt and bash.txt.").with_usage(600, 20),
    ])
}

fn make_repo(h: &Harness) -> std::path::PathBuf {
    let repo = h.root().join("myrepo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("README.md"), "# repo\n").unwrap();
    let git = |args: &[&str]| {
        let st = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(&repo)
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "initial"]);
    repo
}

/// The figure Claude Code itself reported, read from the raw stream it wrote
/// on the session's volume: the last `result` line's `total_cost_usd`.
fn reported_cost(h: &Harness, session_id: &str, container_id: &str) -> f64 {
    let stream = h
        .state()
        .join("sessions")
        .join(session_id)
        .join("volume/runs")
        .join(container_id)
        .join("stream.jsonl");
    let text = std::fs::read_to_string(&stream)
        .unwrap_or_else(|e| panic!("read {}: {e}", stream.display()));
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "result")
        .and_then(|v| v["total_cost_usd"].as_f64())
        .expect("a result line with total_cost_usd")
}

fn container_of(h: &Harness, task_id: &str) -> String {
    h.db()
        .query_row(
            "SELECT c.id FROM containers c JOIN sessions s ON c.session_id = s.id WHERE s.task_id = ?1",
            [task_id],
            |r| r.get(0),
        )
        .expect("container row for task")
}

#[test]
fn sync_task_writes_through_write_and_bash_and_records_everything() {
    let h = Harness::new(write_and_bash_script());
    make_repo(&h);
    let stdout = h.ok(&[
        "task",
        "create",
        "Add a hello.txt that says hi",
        "--workspace",
        "./myrepo",
        "--sync",
    ]);

    // Readable progress: each tool call and the final result with its cost.
    assert!(
        stdout.contains("Write"),
        "no Write tool call in progress:\n{stdout}"
    );
    assert!(
        stdout.contains("Bash"),
        "no Bash tool call in progress:\n{stdout}"
    );
    assert!(
        stdout.contains("Created hello.txt"),
        "no result text:\n{stdout}"
    );
    assert!(stdout.contains('$'), "no cost in progress:\n{stdout}");

    let tasks = h.json(&["task", "list", "--json"]);
    let task_id = tasks
        .as_array()
        .and_then(|a| a.first())
        .map(|t| t["id"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no task in {tasks}"));
    let task = h.json(&["task", "show", &task_id, "--json"]);
    for key in [
        "id",
        "status",
        "session_id",
        "backend",
        "workspace",
        "cost_usd",
        "created_at",
        "finished_at",
        "result",
    ] {
        assert!(
            task.get(key).is_some(),
            "task show --json lacks {key}: {task:#}"
        );
    }
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["backend"], "local");
    assert!(
        task["result"]
            .as_str()
            .unwrap()
            .contains("Created hello.txt")
    );
    assert!(task["finished_at"].is_string());

    // The Write tool's file and the Bash command's file are in the session's workspace,
    // next to the copied repository (with its .git).
    let session_id = task["session_id"].as_str().unwrap();
    let ws = h
        .state()
        .join("sessions")
        .join(session_id)
        .join("workspace");
    assert_eq!(
        std::fs::read_to_string(ws.join("hello.txt")).unwrap(),
        "hi\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("bash.txt")).unwrap(),
        "from-bash-42\n"
    );
    assert!(ws.join(".git").is_dir() && ws.join("README.md").is_file());

    // Events in SQLite: gap-free from 1, in order, and the Bash output is among them.
    let container_id = container_of(&h, &task_id);
    let events = h.events(&container_id);
    let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "events not gap-free"
    );
    let types: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    for t in [
        "session_started",
        "claude_init",
        "tool_call",
        "tool_result",
        "turn_result",
        "session_finished",
    ] {
        assert!(types.contains(&t), "no {t} event in {types:?}");
    }
    assert!(
        events
            .iter()
            .any(|(_, t, p)| t == "tool_result" && p.to_string().contains("from-bash-42")),
        "Bash output not in the events"
    );

    // The recorded cost is what Claude Code reported, and it is not zero.
    let cost = task["cost_usd"].as_f64().unwrap();
    let reported = reported_cost(&h, session_id, &container_id);
    assert!(reported > 0.0);
    assert!(
        (cost - reported).abs() < 1e-9,
        "recorded {cost} != reported {reported}"
    );
}

#[test]
fn async_task_keeps_running_after_the_cli_exits_and_is_seen_finishing() {
    let h = Harness::new(write_and_bash_script());
    let out = h.ok(&["task", "create", "Add a hello.txt that says hi", "--json"]);
    let created: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let task_id = created["task_id"].as_str().expect("task id").to_string();
    // The CLI has exited; the work goes on in the coordinator and the agent.
    let task = h.wait_task(&task_id, |t| {
        t["status"] != "pending" && t["status"] != "running"
    });
    assert_eq!(task["status"], "completed", "{task:#}");

    // `task watch` on a finished task replays its events and exits with its outcome.
    let watch = h.ok(&["task", "watch", &task_id]);
    assert!(
        watch.contains("Write") && watch.contains("Created hello.txt"),
        "{watch}"
    );
    // `status` sees it.
    let status = h.ok(&["status"]);
    assert!(status.contains("completed"), "{status}");
}

#[test]
fn failing_model_calls_fail_the_task_with_a_coded_error() {
    let h = Harness::new(Script::new([Turn::error(ErrorReply::internal()).times(20)]));
    let out = h.run(&["task", "create", "Say hi", "--sync"]);
    assert!(!out.status.success(), "a failed task must exit non-zero");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("E505"),
        "expected E505 on stderr:\n{stderr}"
    );

    let tasks = h.json(&["task", "list", "--json"]);
    let task_id = tasks[0]["id"].as_str().unwrap().to_string();
    let task = h.json(&["task", "show", &task_id, "--json"]);
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error_code"], "E505", "{task:#}");
    assert!(
        task["error_message"].as_str().unwrap_or("").contains("500"),
        "{task:#}"
    );
    // Claude Code retried before giving up, and the retries are events.
    let events = h.events(&container_of(&h, &task_id));
    assert!(
        events.iter().any(|e| e.1 == "api_retry"),
        "no api_retry event"
    );
}

#[test]
fn model_credentials_refused_is_an_auth_error() {
    let h = Harness::new(Script::new([
        Turn::error(ErrorReply::unauthorized()).times(20)
    ]));
    let out = h.run(&["task", "create", "Say hi", "--sync"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("E401"),
        "expected E401 on stderr:\n{stderr}"
    );
}

/// Every agent RPC needs the session's secret: without it, or with a wrong
/// one, the agent refuses; with the coordinator's secret it answers.
#[test]
fn agent_rpc_without_the_session_secret_is_refused() {
    use parhelia_proto::agent_client::AgentClient;
    // A long-running Bash call keeps the session (and so the agent) alive.
    let h = Harness::new(Script::new([Turn::tool_use([ToolCall::bash(
        "tail -f /dev/null",
    )])]));
    let out = h.ok(&["task", "create", "Wait a while", "--json"]);
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let task_id = created["task_id"].as_str().unwrap().to_string();
    h.wait_task(&task_id, |_| h.stand_in.turns_consumed() >= 1);
    let container_id = container_of(&h, &task_id);
    let info_path = h
        .state()
        .join("containers")
        .join(&container_id)
        .join("runtime/agent.json");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&info_path).unwrap()).unwrap();
    let addr = format!("http://{}", info["grpc_addr"].as_str().unwrap());
    let secret: String = h
        .db()
        .query_row(
            "SELECT secret FROM sessions WHERE task_id = ?1",
            [&task_id],
            |r| r.get(0),
        )
        .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = AgentClient::connect(addr.clone()).await.unwrap();
        let err = client
            .get_info(parhelia_proto::GetInfoRequest {})
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::Unauthenticated,
            "no secret: {err:?}"
        );

        let mut req = tonic::Request::new(parhelia_proto::GetInfoRequest {});
        req.metadata_mut()
            .insert("authorization", "Bearer not-the-secret".parse().unwrap());
        let err = client.get_info(req).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::Unauthenticated,
            "wrong secret: {err:?}"
        );

        let mut req = tonic::Request::new(parhelia_proto::GetInfoRequest {});
        req.metadata_mut().insert(
            "authorization",
            parhelia_proto::bearer(&secret).parse().unwrap(),
        );
        let info = client
            .get_info(req)
            .await
            .expect("the right secret is accepted")
            .into_inner();
        assert_eq!(info.container_id, container_id);
    });
    // The secret never reached the agent's log or its spec.
    let runtime = h.state().join("containers").join(&container_id);
    for f in ["spec.json", "runtime/agent.log"] {
        let text = std::fs::read_to_string(runtime.join(f)).unwrap_or_default();
        assert!(!text.contains(&secret), "secret leaked into {f}");
    }
}

/// Heartbeats reach the database with the session's resource use.
#[test]
fn heartbeats_report_resource_use_while_a_session_runs() {
    let h = Harness::new(Script::new([Turn::tool_use([ToolCall::bash(
        "tail -f /dev/null",
    )])]));
    let out = h.ok(&["task", "create", "Wait a while", "--json"]);
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let container_id = created["container_id"].as_str().unwrap().to_string();
    // Claude Code (hundreds of MB resident) is in the tree once the Bash call runs.
    h.wait_for("the Bash call start", || {
        (h.stand_in.turns_consumed() >= 1).then_some(())
    });
    let (memory, disk): (i64, i64) = h.wait_for("a heartbeat with memory in use", || {
        h.db()
            .query_row(
                "SELECT memory_bytes, workspace_disk_bytes FROM heartbeats
                 WHERE container_id = ?1 AND memory_bytes > 50000000 ORDER BY ts_ms DESC LIMIT 1",
                [&container_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok()
    });
    assert!(memory > 50_000_000, "{memory}");
    assert!(disk >= 0);
    let last: Option<i64> = h
        .db()
        .query_row(
            "SELECT last_heartbeat_ms FROM containers WHERE id = ?1",
            [&container_id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(last.is_some(), "the container's last heartbeat is tracked");
}

/// Attaching to a headless session shows its progress as readable lines (the
/// same rendering as `task watch`), never Claude Code's raw stream-json.
#[test]
fn attaching_to_a_headless_session_shows_readable_progress() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("hello.txt", "hi\n")]),
        Turn::tool_use([ToolCall::bash("tail -f /dev/null")]),
    ]));
    let out = h.ok(&["task", "create", "Write, then wait", "--json"]);
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_for("the Bash call", || {
        (h.stand_in.turns_consumed() >= 2).then_some(())
    });

    let mut attach = Follower::start(&h, &["session", "attach", &session_id]);
    let text = attach.until(|l| l.contains("Bash") && l.contains("tail -f"));
    // Leaving the attach leaves the session running.
    drop(attach);
    assert!(text.contains("Write hello.txt"), "{text}");
    assert!(
        !text.contains("\"type\""),
        "raw JSON leaked into attach:\n{text}"
    );
    let task = h.json(&[
        "task",
        "show",
        created["task_id"].as_str().unwrap(),
        "--json",
    ]);
    assert_eq!(task["status"], "running", "{task:#}");
}

/// A `parhelia` command that follows until interrupted, read line by line.
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    args: Vec<String>,
}

impl Follower {
    fn start(h: &Harness, args: &[&str]) -> Follower {
        use std::io::BufRead;
        let mut child = h
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follower {
            child,
            lines,
            seen: Vec::new(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Reads (bounded) until a line satisfies `until`; returns everything read so far.
    fn until(&mut self, until: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !self.seen.iter().any(|l| until(l)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "parhelia {:?} never printed the line; saw:\n{}",
                    self.args,
                    self.seen.join("\n")
                ),
            }
        }
        self.seen.join("\n")
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `session logs -f` prints the session's history and keeps following it:
/// events that happen after the command started show up in its output.
#[test]
fn session_logs_follow_shows_new_events() {
    let h = Harness::new(Script::new([
        // Holds the session until the test creates `go` in the workspace.
        Turn::tool_use([ToolCall::bash(
            "until [ -e go ]; do tail -n0 /dev/null; done; echo released",
        )]),
        Turn::tool_use([ToolCall::write("hello.txt", "hi\n")]),
        Turn::tool_use([ToolCall::bash("tail -f /dev/null")]),
    ]));
    let out = h.ok(&["task", "create", "Wait for go, then write", "--json"]);
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_for("the first Bash call", || {
        (h.stand_in.turns_consumed() >= 1).then_some(())
    });

    let mut logs = Follower::start(&h, &["session", "logs", &session_id, "-f"]);
    let before = logs.until(|l| l.contains("until [ -e go ]"));
    assert!(!before.contains("Write hello.txt"), "{before}");
    // Only now may the session go on: what follows can only arrive by following.
    let workspace = h
        .state()
        .join("sessions")
        .join(&session_id)
        .join("workspace");
    std::fs::write(workspace.join("go"), "").unwrap();
    let after = logs.until(|l| l.contains("Write hello.txt"));
    assert!(after.contains("released"), "{after}");
}

/// `task create --workspace … --sync --progress json`: the coordinator's copy of the
/// workspace into the session reaches the CLI (`SubmitBudgetedTaskWithProgress`, after
/// its reply, until the launch ends) as `advance` lines on stderr that end at the
/// workspace's regular files and their bytes, counted here from the directory the test
/// made. (An async create returns with the reply, before the copy.)
#[test]
fn task_create_reports_the_workspace_copy() {
    let h = Harness::new(Script::new([Turn::text("Nothing to do.")]));
    let repo = make_repo(&h);
    std::fs::create_dir_all(repo.join("data")).unwrap();
    for i in 0..20 {
        std::fs::write(repo.join(format!("data/f{i}")), vec![b'x'; 1000 * (i + 1)]).unwrap();
    }
    fn count(dir: &std::path::Path, files: &mut u64, bytes: &mut u64) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                count(&entry.path(), files, bytes);
            } else if kind.is_file() {
                *files += 1;
                *bytes += entry.metadata().unwrap().len();
            }
        }
    }
    let (mut files, mut bytes) = (0u64, 0u64);
    count(&repo, &mut files, &mut bytes);
    let out = h.run(&[
        "task",
        "create",
        "Look around",
        "--workspace",
        repo.to_str().unwrap(),
        "--sync",
        "--progress",
        "json",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let finished: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["type"] == "progress")
        .collect();
    assert!(lines.iter().all(|l| l["op"] == "task_create"), "{stderr}");
    let advances: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["event"] == "advance").collect();
    let last = advances
        .last()
        .unwrap_or_else(|| panic!("no advance line: {stderr}"));
    assert_eq!(last["files_total"], files, "{stderr}");
    assert_eq!(last["files_done"], files, "{stderr}");
    assert_eq!(last["total"], bytes, "{stderr}");
    assert_eq!(last["done"], bytes, "{stderr}");
    assert_eq!(lines.last().unwrap()["event"], "finish", "{stderr}");
    assert_eq!(finished["status"], "completed", "{finished:#}");
}

/// Issue 17: launches run outside the dispatch lock and outside the submit. A Modal GPU
/// sandbox that takes long to schedule (the stand-in's `schedule_seconds`) holds up its
/// own task and nothing else: `task create` of it returns once the task is placed (no
/// sandbox exists yet), and a local task created meanwhile launches and completes while
/// the first is still launching; cancelling the launching task then ends it.
#[test]
fn a_hanging_launch_holds_up_no_other_dispatch() {
    use parhelia_testkit::model_stand_in::WhenExhausted;
    let mut h =
        Harness::new(Script::new([]).when_exhausted(WhenExhausted::Default(Turn::text("Done."))));
    let standin = h.use_modal_stand_in();
    h.ok(&["modal", "setup"]);
    h.ok(&["budget", "set", "10000"]);
    // Longer than the whole test: only its cancel ends the task.
    std::fs::write(
        standin.join("faults.json"),
        serde_json::json!({"schedule_seconds": {"H100": 90}}).to_string(),
    )
    .unwrap();
    let h100_sandboxes = || {
        std::fs::read_dir(standin.join("sandboxes"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path().join("sandbox.json")).ok())
                    .filter(|text| text.contains("H100"))
                    .count()
            })
            .unwrap_or(0)
    };
    let slow = h.json(&[
        "task",
        "create",
        "Train",
        "--backend",
        "modal",
        "--gpu",
        "H100",
        "--json",
    ]);
    assert_eq!(slow["launching"], true, "{slow:#}");
    let slow_id = slow["task_id"].as_str().unwrap().to_string();
    let slow_container = slow["container_id"].as_str().unwrap().to_string();
    assert_eq!(
        h100_sandboxes(),
        0,
        "the submit did not wait for the sandbox"
    );
    // Claimed (a container record, `created`), not yet started by its backend.
    let starting =
        |h: &Harness| h.json(&["container", "show", &slow_container, "--json"])["state"].clone();
    assert_eq!(starting(&h), "created");
    assert_eq!(
        h.json(&["task", "show", &slow_id, "--json"])["status"],
        "running"
    );

    // A local task created meanwhile launches and runs to its end.
    let fast = h.json(&["task", "create", "Say hello", "--json"]);
    assert_eq!(fast["launching"], true, "{fast:#}");
    let fast_id = fast["task_id"].as_str().unwrap();
    let done = h.wait_task(fast_id, |t| {
        matches!(
            t["status"].as_str(),
            Some("completed" | "failed" | "cancelled" | "interrupted")
        )
    });
    assert_eq!(done["status"], "completed", "{done:#}");
    // …while the GPU sandbox was still being scheduled.
    assert_eq!(h100_sandboxes(), 0);
    assert_eq!(starting(&h), "created");

    // The launching task can be cancelled; its launch, when it ends, stops what it made.
    h.ok(&["task", "cancel", &slow_id]);
    let cancelled = h.json(&["task", "show", &slow_id, "--json"]);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
}
