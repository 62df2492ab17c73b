//! Tests that fail when the docs drift from what the code defines: the journal's event
//! kinds, the error codes the docs cite, the config keys, `spec.json`'s fields and the
//! CLI's commands.
//! Each reads the docs as text from the workspace and compares with the code's own list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("coordinator/ is inside the workspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = workspace().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// README.md and every Markdown file under docs/, as (path, text).
fn all_docs() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "md") {
                out.push(path);
            }
        }
    }
    let root = workspace();
    let mut files = vec![root.join("README.md")];
    walk(&root.join("docs"), &mut files);
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable doc");
            let rel = p.strip_prefix(&root).expect("inside").display().to_string();
            (rel, text)
        })
        .collect()
}

/// The backticked snake_case names in `text`.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(str::to_owned)
        .collect()
}

/// The field names of `message Event`'s `oneof kind` in the proto file.
fn proto_event_kinds() -> Vec<String> {
    let proto = read("proto/proto/parhelia/v1/agent.proto");
    let event = &proto[proto.find("message Event {").expect("message Event")..];
    let oneof = &event[event.find("oneof kind {").expect("oneof kind")..];
    let oneof = &oneof[..oneof.find('}').expect("end of oneof")];
    oneof
        .lines()
        .skip(1)
        .filter_map(|line| {
            // `SessionStarted session_started = 10;`
            let mut words = line.split_whitespace();
            let _type = words.next()?;
            let name = words.next()?;
            (words.next() == Some("=")).then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn the_journal_doc_lists_every_event_kind_the_agent_writes() {
    let doc = read("docs/formats/journal.md");
    let start = doc
        .find("- `kind`: exactly one key")
        .expect("journal.md's `kind` bullet");
    let end = start
        + doc[start..]
            .find("whose value")
            .expect("end of the kind list");
    let listed = backticked(&doc[start..end]);
    let listed: Vec<&str> = listed
        .iter()
        .map(String::as_str)
        .filter(|n| *n != "kind")
        .collect();
    let in_proto = proto_event_kinds();
    let in_proto: Vec<&str> = in_proto.iter().map(String::as_str).collect();
    assert_eq!(
        listed, in_proto,
        "docs/formats/journal.md lists other event kinds than agent.proto's Event.kind"
    );
    assert_eq!(
        listed,
        parhelia_proto::EVENT_TYPE_NAMES,
        "docs/formats/journal.md lists other event kinds than parhelia_proto::EVENT_TYPE_NAMES"
    );
}

/// Every `E` + three digits in `text` (not part of a longer word).
fn cited_codes(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    for i in 0..bytes.len().saturating_sub(3) {
        let before_ok = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        let after_ok = bytes
            .get(i + 4)
            .is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'_');
        if before_ok
            && after_ok
            && bytes[i] == b'E'
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            out.insert(text[i..i + 4].to_owned());
        }
    }
    out
}

#[test]
fn every_error_code_the_docs_or_the_agent_cite_is_in_the_table() {
    let known: BTreeSet<&str> = crate::error_codes::ALL.iter().map(|c| c.code).collect();
    let mut unknown: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut sources = all_docs();
    // The agent sends codes the coordinator must know (`SessionFinished.error_code`,
    // `CheckpointFailed`, …); the checkpoint crate's `code()`s too.
    for dir in ["agent/src", "checkpoint/src"] {
        let mut stack = vec![workspace().join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("readable src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&path).expect("readable source");
                    let rel = path.strip_prefix(workspace()).expect("inside");
                    sources.push((rel.display().to_string(), text));
                }
            }
        }
    }
    for (path, text) in &sources {
        for code in cited_codes(text) {
            if !known.contains(code.as_str()) {
                unknown.entry(code).or_default().insert(path.clone());
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "codes cited but not in contract/src/codes.rs: {unknown:?}"
    );
    // And the reader itself finds codes and only codes.
    assert_eq!(
        cited_codes("E201, (E5xx) `E620` XE100 E1000 E300."),
        BTreeSet::from(["E201".to_owned(), "E620".into(), "E300".into()])
    );
}

#[test]
fn the_config_doc_has_one_row_per_key_with_its_variable() {
    let doc = read("docs/formats/config.md");
    // Rows of the keys tables: | `section.key` | type | default | `VAR` | meaning |
    let mut rows: BTreeMap<String, String> = BTreeMap::new();
    for line in doc.lines() {
        // `\|` is a pipe inside a cell (`auto` \| `none`), not a cell border.
        let line = line.replace("\\|", "/");
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 6 || !cells[1].starts_with('`') || !cells[1].contains('.') {
            continue;
        }
        // The cell's first backticked name; a note such as "(per task)" may follow it.
        let key = cells[1].split('`').nth(1).unwrap_or("").to_owned();
        // The cell's first backticked name (a note may follow it).
        let var = cells[4].split('`').nth(1).unwrap_or("").to_owned();
        assert!(
            rows.insert(key.clone(), var).is_none(),
            "docs/formats/config.md lists `{key}` twice"
        );
    }
    let in_code: BTreeMap<String, String> = crate::config::KEYS
        .iter()
        .map(|k| (k.dotted(), k.env_var()))
        .collect();
    let missing: Vec<&String> = in_code.keys().filter(|k| !rows.contains_key(*k)).collect();
    let extra: Vec<&String> = rows.keys().filter(|k| !in_code.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/formats/config.md's key tables differ from config::KEYS: missing {missing:?}, \
         not keys {extra:?}"
    );
    for (key, var) in &in_code {
        assert_eq!(
            &rows[key], var,
            "docs/formats/config.md gives `{key}` another environment variable"
        );
    }
}

/// Every command path the CLI accepts, as words (`["task", "create"]`), and whether it
/// is shown in `--help` (hidden ones are internal: documented or not).
fn cli_paths() -> Vec<(Vec<String>, bool)> {
    fn walk(cmd: &clap::Command, prefix: &[String], out: &mut Vec<(Vec<String>, bool)>) {
        for sub in cmd.get_subcommands() {
            let mut path = prefix.to_vec();
            path.push(sub.get_name().to_owned());
            out.push((path.clone(), !sub.is_hide_set()));
            walk(sub, &path, out);
        }
    }
    let mut out = Vec::new();
    walk(&crate::cli::Cli::command(), &[], &mut out);
    out
}

/// Command paths the docs show: each `parhelia a b …` in the docs' text, and the
/// README's grouped form `parhelia group x | y <arg> | z`, as the words that name
/// commands (arguments, options and placeholders dropped).
fn documented_paths(docs: &[(String, String)]) -> BTreeSet<Vec<String>> {
    let word = |w: &str| {
        !w.is_empty()
            && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            && !w.starts_with('-')
    };
    let mut out = BTreeSet::new();
    for (_, text) in docs {
        for (i, _) in text.match_indices("parhelia ") {
            if text[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '/' || c == '_')
            {
                continue;
            }
            let line = text[i + "parhelia ".len()..].lines().next().unwrap_or("");
            let line = line.split('#').next().unwrap_or("");
            let line = line.split('`').next().unwrap_or("");
            let mut segments = line.split(" | ");
            let first: Vec<&str> = segments
                .next()
                .unwrap_or("")
                .split_whitespace()
                .take_while(|w| word(w))
                .collect();
            if first.is_empty() {
                continue;
            }
            out.insert(first.iter().map(|w| w.to_string()).collect::<Vec<_>>());
            if first.len() >= 2 {
                let group: Vec<String> = first[..first.len() - 1]
                    .iter()
                    .map(|w| w.to_string())
                    .collect();
                for seg in segments {
                    let Some(sub) = seg.split_whitespace().next().filter(|w| word(w)) else {
                        break;
                    };
                    let mut path = group.clone();
                    path.push(sub.to_owned());
                    out.insert(path);
                }
            }
        }
    }
    out
}

#[test]
fn every_cli_command_is_documented_and_every_documented_command_exists() {
    let docs = all_docs();
    let documented = documented_paths(&docs);
    let all = cli_paths();
    let paths: Vec<Vec<String>> = all.iter().map(|(p, _)| p.clone()).collect();
    let real: BTreeSet<Vec<String>> = paths.iter().cloned().collect();
    // A documented path names a command when its longest prefix that is a command is
    // followed only by arguments (words after a leaf command are its arguments).
    let mut not_commands = Vec::new();
    for doc_path in &documented {
        let known_prefix = (1..=doc_path.len())
            .rev()
            .find(|n| real.contains(&doc_path[..*n]));
        match known_prefix {
            None => not_commands.push(doc_path.join(" ")),
            Some(n) if n < doc_path.len() => {
                // The next word must not be meant as a subcommand of a group.
                let parent = &doc_path[..n];
                let has_subcommands = paths
                    .iter()
                    .any(|p| p.len() == n + 1 && p.starts_with(parent));
                if has_subcommands {
                    not_commands.push(doc_path.join(" "));
                }
            }
            Some(_) => {}
        }
    }
    assert!(
        not_commands.is_empty(),
        "the docs show commands the CLI does not have: {not_commands:?}"
    );
    let undocumented: Vec<String> = all
        .iter()
        .filter(|(p, shown)| *shown && !documented.iter().any(|d| d.starts_with(p)))
        .map(|(p, _)| p.join(" "))
        .collect();
    assert!(
        undocumented.is_empty(),
        "CLI commands no doc shows (add `parhelia …` lines to README.md or docs/): {undocumented:?}"
    );
}

/// `images/modal/app.py` lays out a volume by hand (`modal run …::init_volume_structure`)
/// with its own copy of the coordinator's `modal init-volume` directories: the two
/// must say the same, directory for directory, README text for README text.
#[test]
fn the_modal_apps_volume_layout_is_the_coordinators() {
    let app = read("images/modal/app.py");
    let start = app
        .find("VOLUME_DIRS = (")
        .expect("app.py defines VOLUME_DIRS");
    let block = &app[start..start + app[start..].find("\n)\n").expect("VOLUME_DIRS ends")];
    let python: Vec<(String, String)> = block
        .lines()
        .filter_map(|line| {
            let line = line.trim().strip_prefix("(\"")?.strip_suffix("\"),")?;
            let (dir, text) = line.split_once("\", \"")?;
            Some((dir.to_string(), text.replace("\\n", "\n")))
        })
        .collect();
    let rust: Vec<(String, String)> = crate::modal_ops::VOLUME_DIRS
        .iter()
        .map(|(dir, text)| (dir.to_string(), text.to_string()))
        .collect();
    assert_eq!(
        python, rust,
        "images/modal/app.py's VOLUME_DIRS has drifted"
    );
    // The init script's reply names the same directories.
    let names: Vec<String> = rust.iter().map(|(d, _)| format!("\"{d}\"")).collect();
    assert!(
        app.contains(&format!("\"dirs\":[{}]", names.join(","))),
        "app.py's init-volume reply lists other directories than {names:?}"
    );
}

/// The first ```json block after the line holding `marker`, with its `//` comments cut
/// (outside strings), parsed.
fn json_example_after(doc: &str, marker: &str) -> serde_json::Value {
    let text = read(doc);
    let after = &text[text
        .find(marker)
        .unwrap_or_else(|| panic!("{doc}: no {marker:?}"))..];
    let start = after.find("```json\n").expect("a json block") + "```json\n".len();
    let block = &after[start..start + after[start..].find("```").expect("a closed block")];
    let mut json = String::new();
    for line in block.lines() {
        let mut in_string = false;
        let mut previous = ' ';
        let mut cut = line.len();
        for (i, c) in line.char_indices() {
            match c {
                '"' if previous != '\\' => in_string = !in_string,
                '/' if !in_string && previous == '/' => {
                    cut = i - 1;
                    break;
                }
                _ => {}
            }
            previous = c;
        }
        json.push_str(&line[..cut]);
        json.push('\n');
    }
    serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("{doc}: the example after {marker:?} is not JSON: {e}"))
}

/// Every key path in `value` (`checkpoint.limits.max_bytes`; an array's entries as
/// `binds[]`, a map keyed by data as `model_prices.*`).
fn key_paths(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let key = if prefix == "model_prices" {
                    "*"
                } else {
                    key.as_str()
                };
                let path = if prefix.is_empty() {
                    key.to_string()
                } else {
                    format!("{prefix}.{key}")
                };
                out.insert(path.clone());
                key_paths(inner, &path, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// `docs/dev/contracts.md` shows `spec.json` with every field: what it shows reads as a
/// spec (`parhelia_contract::spec`, which refuses unknown fields), and every field the
/// type writes is shown. The struct literal below names every field, so a new one does
/// not compile until it is set here, and then this fails until the doc shows it.
#[test]
fn the_contract_doc_shows_every_spec_field() {
    use parhelia_contract::spec::*;
    let documented = json_example_after(
        "docs/dev/contracts.md",
        "`spec.json` (written by the backend",
    );
    let parsed: LaunchSpec = serde_json::from_value(documented.clone())
        .unwrap_or_else(|e| panic!("docs/dev/contracts.md's spec.json is not a spec: {e}"));
    assert_eq!(parsed.version, SPEC_VERSION);
    let every_field = LaunchSpec {
        version: SPEC_VERSION,
        session_id: String::new(),
        task_id: String::new(),
        container_id: String::new(),
        prompt: String::new(),
        mode: SessionMode::Headless,
        claude_session_id: String::new(),
        resume: false,
        model: Some(String::new()),
        max_turns: Some(1),
        claude_bin: "/".into(),
        workspace_dir: "/".into(),
        claude_config_dir: "/".into(),
        volume_dir: "/".into(),
        runtime_dir: "/".into(),
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        heartbeat_interval_ms: 0,
        linger_after_finish_ms: 0,
        stop_grace_ms: 0,
        restore_checkpoint: Some(String::new()),
        max_budget_usd: Some(1.0),
        prior_cost_usd: Some(1.0),
        charged_elsewhere: vec![ChargedElsewhere {
            message_id: String::new(),
            cost_usd: 0.0,
        }],
        checkpoint: CheckpointSpec {
            limits: parhelia_checkpoint::Limits::default().to_spec(),
            lock_wait_ms: Some(1),
            ..CheckpointSpec::default()
        },
        claude_config_seed: Some("/".into()),
        sandbox: Some(SandboxSpec {
            binds: vec![SandboxBind {
                source: "/".into(),
                target: "/".into(),
                writable: false,
            }],
            ..SandboxSpec::default()
        }),
        timeout_ms: Some(1),
        session_user: Some(String::new()),
        model_prices: [(String::new(), ModelPrice::default())].into(),
    };
    let (mut shown, mut defined) = (BTreeSet::new(), BTreeSet::new());
    key_paths(&documented, "", &mut shown);
    key_paths(
        &serde_json::to_value(&every_field).unwrap(),
        "",
        &mut defined,
    );
    let missing: Vec<_> = defined.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "spec.json fields docs/dev/contracts.md does not show: {missing:?}"
    );
}
