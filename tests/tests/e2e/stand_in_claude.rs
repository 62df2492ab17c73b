//! The real Claude Code against the stand-in: a scripted Write and Bash must really happen.
//!
//! Needs Claude Code (`npm ci --prefix tools/claude-code`, or `PARHELIA_CLAUDE_BIN`); without
//! it this test fails with those instructions rather than skipping.

use std::time::Duration;

use parhelia_testkit::claude_code::{HeadlessClaude, claude_bin, parse_stream_json};
use parhelia_testkit::model_stand_in::pricing::{observed_price, same_cost};
use parhelia_testkit::model_stand_in::{RequestKind, Script, StandIn, ToolCall, Turn, Usage};

/// Only a hang guard: Claude Code normally finishes this script in about a second.
const HANG_GUARD: Duration = Duration::from_secs(300);

#[test]
fn claude_code_runs_a_scripted_write_and_bash() {
    if let Err(not_found) = claude_bin() {
        panic!("{not_found}");
    }
    let script = Script::new([
        Turn::text_then_tool_use("Creating the file.", [ToolCall::write("hello.txt", "hi\n")])
            .with_usage(120, 30),
        Turn::tool_use([ToolCall::bash("cat hello.txt; echo hello-from-bash")]).with_usage(150, 20),
        Turn::text("done").with_usage(200, 5),
    ]);
    let stand_in = StandIn::start(script).expect("start the stand-in");
    let dir = tempfile::tempdir().expect("tempdir");
    let (config_dir, workspace) = (dir.path().join("config"), dir.path().join("workspace"));
    let tmp_dir = dir.path().join("tmp");
    for needed in [&workspace, &tmp_dir] {
        std::fs::create_dir_all(needed).expect("test directories");
    }
    let mut claude =
        HeadlessClaude::new(stand_in.base_url(), &config_dir, &workspace).expect("claude");
    // Keep what Claude Code leaves in its temp dir inside the test's own directory.
    claude.tmp_dir = Some(tmp_dir);

    let output = claude
        .run(["-p", "Write hello.txt, then cat it."], "", HANG_GUARD)
        .expect("run Claude Code");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "claude failed: {stderr}");

    assert_eq!(
        std::fs::read_to_string(workspace.join("hello.txt")).expect("hello.txt was written"),
        "hi\n"
    );
    let lines = parse_stream_json(&output.stdout).expect("stream-json");
    let bash_result = lines
        .iter()
        .filter(|line| line["type"] == "user")
        .find_map(|line| line["tool_use_result"]["stdout"].as_str())
        .expect("a Bash tool result in the stream");
    assert_eq!(bash_result, "hi\nhello-from-bash");
    let result = lines.last().expect("a result line");
    assert_eq!(result["type"], "result");
    assert_eq!(result["is_error"], false);
    assert_eq!(result["result"], "done");
    assert_eq!(result["num_turns"], 3);
    // Claude Code counts the stand-in's usage (470 input, 55 output tokens) and prices it by
    // the model it asked for.
    assert_eq!(result["usage"]["input_tokens"], 470);
    assert_eq!(result["usage"]["output_tokens"], 55);
    let model = lines
        .iter()
        .find(|line| line["type"] == "system" && line["subtype"] == "init")
        .and_then(|init| init["model"].as_str())
        .expect("an init line naming the model");
    let price = observed_price(model).unwrap_or_else(|| {
        panic!("no observed price for {model}: measure it and add it to OBSERVED_PRICES")
    });
    let reported = result["total_cost_usd"].as_f64().expect("total_cost_usd");
    let predicted = price.cost_usd(&Usage::new(470, 55));
    assert!(
        same_cost(reported, predicted),
        "reported {reported}, predicted {predicted}"
    );

    assert_eq!(stand_in.turns_consumed(), 3);
    let turns: Vec<_> = stand_in
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::Turn)
        .collect();
    assert_eq!(
        turns[0].last_user_text.as_deref(),
        Some("Write hello.txt, then cat it.")
    );
    assert_eq!(turns[2].tool_results, ["hi\nhello-from-bash"]);
    assert!(
        turns
            .windows(2)
            .all(|w| w[0].message_count < w[1].message_count),
        "each turn carries the history: {:?}",
        turns.iter().map(|t| t.message_count).collect::<Vec<_>>()
    );
}
