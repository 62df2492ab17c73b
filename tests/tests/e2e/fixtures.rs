//! The captured Claude Code samples in `tests/fixtures/` (re-captured by
//! `tests/fixtures/capture.sh`) still show the behaviour the notes and the agent rely on.

use std::path::{Path, PathBuf};

use parhelia_testkit::claude_code::parse_stream_json;
use parhelia_testkit::model_stand_in::pricing::same_cost;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn stream(name: &str) -> Vec<Value> {
    let path = fixtures().join("stream-json").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_stream_json(&bytes).expect("stream-json")
}

fn results(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["type"] == "result").collect()
}

#[test]
fn every_stream_fixture_ends_with_a_result_and_every_line_has_a_type() {
    let dir = fixtures().join("stream-json");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("stream-json dir") {
        let path = entry.expect("entry").path();
        let lines = parse_stream_json(&std::fs::read(&path).expect("read")).expect("json");
        assert!(lines.iter().all(|l| l["type"].is_string()), "{path:?}");
        assert!(
            lines.iter().all(|l| l["session_id"].is_string()),
            "{path:?}"
        );
        assert_eq!(
            lines.last().map(|l| &l["type"]),
            Some(&Value::from("result"))
        );
        count += 1;
    }
    assert!(count >= 6, "fixtures missing from {dir:?}");
}

#[test]
fn api_errors_are_success_subtype_with_is_error_after_api_retry_lines() {
    for (name, status) in [("api-error-500.jsonl", 500), ("api-error-401.jsonl", 401)] {
        let lines = stream(name);
        let retries: Vec<&Value> = lines
            .iter()
            .filter(|l| l["type"] == "system" && l["subtype"] == "api_retry")
            .collect();
        assert_eq!(retries.len(), 1, "{name}: CLAUDE_CODE_MAX_RETRIES=1");
        assert_eq!(retries[0]["error_status"], status);
        let result = results(&lines)[0];
        assert_eq!(result["subtype"], "success");
        assert_eq!(result["is_error"], true);
        assert_eq!(result["api_error_status"], status);
        assert_eq!(result["total_cost_usd"], 0.0);
    }
}

#[test]
fn resume_reports_the_cost_of_the_whole_session_but_usage_of_its_own_process() {
    let first = stream("success-write-bash.jsonl");
    let resumed = stream("resume.jsonl");
    let first_cost = results(&first)[0]["total_cost_usd"].as_f64().expect("cost");
    let result = results(&resumed)[0];
    let own_cost = result["model_usage_since_last_result"]["claude-opus-5-5"]["costUSD"]
        .as_f64()
        .expect("own cost");
    let total = result["total_cost_usd"].as_f64().expect("cost");
    assert!(same_cost(total, first_cost + own_cost), "{total}");
    assert_eq!(
        result["usage"]["input_tokens"], 50,
        "usage is this process only"
    );
}

#[test]
fn stream_input_gives_one_result_per_line_with_cumulative_cost() {
    let lines = stream("stream-input-two-turns.jsonl");
    let results = results(&lines);
    assert_eq!(results.len(), 2);
    let (first, second) = (results[0], results[1]);
    let first_cost = first["total_cost_usd"].as_f64().expect("cost");
    let turn_cost = second["model_usage_since_last_result"]["claude-opus-5-5"]["costUSD"]
        .as_f64()
        .expect("turn cost");
    let second_cost = second["total_cost_usd"].as_f64().expect("cost");
    assert!(same_cost(second_cost, first_cost + turn_cost));
    assert_eq!(
        second["usage"]["input_tokens"], 500,
        "usage covers the turn only"
    );
    assert_eq!(second["result_index"], 1);
    let inits = lines.iter().filter(|l| l["subtype"] == "init").count();
    assert_eq!(inits, 2, "an init line precedes every turn");
}

#[test]
fn hook_payloads_carry_the_common_fields_and_name_their_event() {
    let dir = fixtures().join("hooks");
    for entry in std::fs::read_dir(&dir).expect("hooks dir") {
        let path = entry.expect("entry").path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_owned();
        let json: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        if stem == "settings" {
            assert!(json["hooks"]["Stop"][0]["hooks"][0]["command"].is_string());
            continue;
        }
        let event = stem.split('-').next().expect("event");
        assert_eq!(json["hook_event_name"], event, "{path:?}");
        for field in ["session_id", "transcript_path", "cwd"] {
            assert!(json[field].is_string(), "{path:?} lacks {field}");
        }
    }
}
