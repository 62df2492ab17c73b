//! How Claude Code is started: its config dir, command line, environment and the
//! launcher script tmux runs.
//!
//! Promises:
//! - The config dir is pre-seeded so Claude Code never stops at a first-run dialog and
//!   never deletes a restored transcript (`cleanupPeriodDays: 36500`); existing files are
//!   merged, not replaced.
//! - The environment is the agent's own minus every `PARHELIA_*` variable (the session
//!   secret among them) and tmux's own variables, plus `CLAUDE_CONFIG_DIR`,
//!   `DISABLE_TELEMETRY=1`, `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1` and, as root,
//!   `IS_SANDBOX=1` (required for `--dangerously-skip-permissions`).
//! - No prompt text is ever on a command line or in the script: prompts go through the
//!   input FIFO as stream-json user messages ([`user_message_line`]). Every argument in
//!   the script is single-quoted.
//! - The launcher script records Claude Code's pid (`claude.pid`, written before `exec`,
//!   so it is Claude Code's own pid) and its exit status (`exit_status`, written atomically
//!   after it exits: 126/127 mean it could not be executed).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::layout::Layout;
use crate::spec::LaunchSpec;

/// Failures preparing a launch. Each message reads after "failed to ".
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A file or directory the launch needs could not be written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// An existing Claude Code config file is not a JSON object.
    #[error("update {path}: it is not a JSON object")]
    NotAnObject { path: PathBuf },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LaunchError {
    let path = path.to_path_buf();
    move |source| LaunchError::Io {
        action,
        path,
        source,
    }
}

/// Quotes `text` for a POSIX shell: `'…'`, with embedded `'` written as `'\''`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Why `path` cannot be run as Claude Code, or `None` when it can.
pub fn not_executable_reason(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) => Some(format!("{}: {e}", path.display())),
        Ok(meta) if !meta.is_file() => Some(format!("{} is not a file", path.display())),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
            Some(format!("{} is not executable", path.display()))
        }
        Ok(_) => match nix::unistd::access(path, nix::unistd::AccessFlags::X_OK) {
            Ok(()) => None,
            Err(e) => Some(format!("{} is not executable: {e}", path.display())),
        },
    }
}

/// Creates the config dir and merges in what Claude Code needs to run unattended. With
/// `api_key` (the `ANTHROPIC_API_KEY` Claude Code will see), the key is pre-approved (its
/// last 20 characters, as Claude Code records it) so the TUI does not ask about it.
pub fn prepare_config_dir(
    config_dir: &Path,
    workspace_dir: &Path,
    api_key: Option<&str>,
) -> Result<(), LaunchError> {
    std::fs::create_dir_all(config_dir).map_err(io_error("create", config_dir))?;

    merge_json_object(&config_dir.join("settings.json"), |settings| {
        settings.insert("cleanupPeriodDays".into(), 36500.into());
        settings.insert("skipDangerousModePermissionPrompt".into(), true.into());
    })?;

    let mut trusted = vec![workspace_dir.to_string_lossy().into_owned()];
    if let Ok(real) = std::fs::canonicalize(workspace_dir) {
        let real = real.to_string_lossy().into_owned();
        if !trusted.contains(&real) {
            trusted.push(real);
        }
    }
    let approved_key = api_key.filter(|key| !key.is_empty()).map(|key| {
        let chars: Vec<char> = key.chars().collect();
        chars[chars.len().saturating_sub(20)..]
            .iter()
            .collect::<String>()
    });
    merge_json_object(&config_dir.join(".claude.json"), |state| {
        state.insert("hasCompletedOnboarding".into(), true.into());
        if let Some(approved_key) = &approved_key {
            let responses = state
                .entry("customApiKeyResponses")
                .or_insert_with(|| serde_json::json!({}));
            if !responses.is_object() {
                *responses = serde_json::json!({});
            }
            let approved = responses
                .as_object_mut()
                .expect("made an object above")
                .entry("approved")
                .or_insert_with(|| serde_json::json!([]));
            if !approved.is_array() {
                *approved = serde_json::json!([]);
            }
            let list = approved.as_array_mut().expect("made an array above");
            if !list.iter().any(|v| v == approved_key.as_str()) {
                list.push(approved_key.as_str().into());
            }
        }
        let projects = state
            .entry("projects")
            .or_insert_with(|| serde_json::json!({}));
        if !projects.is_object() {
            *projects = serde_json::json!({});
        }
        for path in &trusted {
            let project = projects
                .as_object_mut()
                .expect("made an object above")
                .entry(path.clone())
                .or_insert_with(|| serde_json::json!({}));
            if let Some(project) = project.as_object_mut() {
                project.insert("hasTrustDialogAccepted".into(), true.into());
            }
        }
    })
}

pub(crate) fn merge_json_object(
    path: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<(), LaunchError> {
    let mut object = match read_config_file(path) {
        Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(object)) => object,
            _ => {
                return Err(LaunchError::NotAnObject {
                    path: path.to_path_buf(),
                });
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Map::new(),
        Err(e) => return Err(io_error("read", path)(e)),
    };
    edit(&mut object);
    let text = serde_json::to_vec_pretty(&serde_json::Value::Object(object))
        .expect("a JSON map always serializes");
    write_atomically(path, &text).map_err(io_error("write", path))
}

/// The most of a Claude Code config file (`settings.json`, `.claude.json`) the agent reads.
const MAX_CONFIG_FILE_BYTES: u64 = 64 << 20;

/// Reads a config file in a directory the session writes: never through a link (the
/// agent may be root, the session not), only a regular file, at most
/// [`MAX_CONFIG_FILE_BYTES`] (more is an error, never a silent cut).
fn read_config_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_CONFIG_FILE_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// Reads at most `limit` bytes of a file the session may have written, without following
/// a symbolic link at `path` and only if it is a regular file. `None` when it cannot.
pub fn read_small_file(path: &Path, limit: u64) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(limit).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Writes `bytes` to `path` via a temporary file, fsync and rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{file_name}.tmp"));
    // The directory may be one the session writes (its config dir): never follow a link
    // planted at the temporary name; O_EXCL refuses anything that is there.
    match std::fs::remove_file(&temp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Claude Code's arguments for a headless session. `plugin_dirs` are passed with
/// `--plugin-dir` (see [`crate::config_seed::plugin_dirs`]).
pub fn headless_arguments(
    spec: &LaunchSpec,
    hooks_settings: &Path,
    plugin_dirs: &[PathBuf],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    args.extend(session_arguments(spec, hooks_settings, plugin_dirs));
    // Print-mode limits: Claude Code honours them only with -p.
    if let Some(max_turns) = spec.max_turns {
        args.push("--max-turns".into());
        args.push(max_turns.to_string());
    }
    if let Some(max_budget_usd) = spec.max_budget_usd {
        args.push("--max-budget-usd".into());
        args.push(format!("{max_budget_usd:.6}"));
    }
    args
}

/// Claude Code's arguments for an interactive (TUI) session. The prompt is not among
/// them: it is typed into the TUI once it is ready. `--max-turns` and
/// `--max-budget-usd` are print-mode flags, so an interactive session's budget is
/// fenced by the coordinator's watchdog alone.
pub fn interactive_arguments(
    spec: &LaunchSpec,
    hooks_settings: &Path,
    plugin_dirs: &[PathBuf],
) -> Vec<String> {
    session_arguments(spec, hooks_settings, plugin_dirs)
}

/// What both modes pass: permissions, the session (new or resumed), the hooks, the
/// model, the plugins.
fn session_arguments(
    spec: &LaunchSpec,
    hooks_settings: &Path,
    plugin_dirs: &[PathBuf],
) -> Vec<String> {
    let mut args = vec!["--dangerously-skip-permissions".to_string()];
    args.push(
        if spec.resume {
            "--resume"
        } else {
            "--session-id"
        }
        .into(),
    );
    args.push(spec.claude_session_id.clone());
    args.push("--settings".into());
    args.push(hooks_settings.to_string_lossy().into_owned());
    if let Some(model) = &spec.model {
        args.push("--model".into());
        args.push(model.clone());
    }
    for dir in plugin_dirs {
        args.push("--plugin-dir".into());
        args.push(dir.to_string_lossy().into_owned());
    }
    args
}

/// The environment for tmux and Claude Code, from the agent's own environment.
pub fn environment(
    agent_environment: impl IntoIterator<Item = (OsString, OsString)>,
    config_dir: &Path,
    running_as_root: bool,
) -> Vec<(OsString, OsString)> {
    const DROPPED: &[&str] = &["TMUX", "TMUX_PANE"];
    let mut environment: Vec<(OsString, OsString)> = agent_environment
        .into_iter()
        .filter(|(key, _)| {
            let key = key.to_string_lossy();
            !key.starts_with("PARHELIA_") && !DROPPED.contains(&key.as_ref())
        })
        .collect();
    let mut set = |key: &str, value: OsString| {
        environment.retain(|(k, _)| k != key);
        environment.push((key.into(), value));
    };
    set("CLAUDE_CONFIG_DIR", config_dir.as_os_str().to_owned());
    set("DISABLE_TELEMETRY", "1".into());
    set("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into());
    if running_as_root {
        set("IS_SANDBOX", "1".into());
    }
    environment
}

/// The launcher script tmux runs in the session's pane.
pub fn launcher_script(spec: &LaunchSpec, layout: &Layout, claude_arguments: &[String]) -> String {
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let mut claude = shell_quote(&spec.claude_bin.to_string_lossy());
    for arg in claude_arguments {
        claude.push(' ');
        claude.push_str(&shell_quote(arg));
    }
    let exit_status = q(&layout.exit_status);
    let exit_status_temp = q(&layout.exit_status.with_extension("tmp"));
    // Headless: stdin from the FIFO, stdout to the stream file. Interactive: the TUI
    // keeps the pane's terminal.
    let (mode, redirections) = match spec.mode {
        crate::spec::SessionMode::Headless => (
            "headless",
            format!(
                " < {} >> {} 2>> {}",
                q(&layout.input_fifo),
                q(&layout.stream),
                q(&layout.stderr)
            ),
        ),
        crate::spec::SessionMode::Interactive => ("interactively", String::new()),
    };
    format!(
        r#"#!/bin/sh
# Written by parhelia-agent for container {container}. Runs Claude Code once, {mode}.
# It holds no secrets: credentials come from the environment, prompts from the agent.
cd {workspace} || exit 126
# The inner shell writes its own pid, then execs Claude Code, which keeps that pid.
/bin/sh -c 'echo $$ > "$1.tmp" && mv "$1.tmp" "$1" && shift && exec "$@"' parhelia-launch {pid_file} {claude}{redirections}
status=$?
echo "$status" > {exit_status_temp} && mv {exit_status_temp} {exit_status}
"#,
        container = spec.container_id,
        workspace = q(&spec.workspace_dir),
        pid_file = q(&layout.claude_pid),
    )
}

/// One stream-json user message, the way Claude Code reads a turn from stdin.
pub fn user_message_line(text: &str) -> String {
    let mut line = serde_json::json!({
        "type": "user",
        "message": {"role": "user", "content": text},
    })
    .to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::example_json;

    fn spec(edit: impl FnOnce(&mut serde_json::Value)) -> LaunchSpec {
        let mut value = example_json();
        edit(&mut value);
        crate::spec::from_json(&value.to_string()).unwrap()
    }

    #[test]
    fn quoting_survives_the_shell() {
        for text in [
            "plain",
            "it's",
            "a b",
            "$(rm -rf /)",
            "`x`",
            "\"q\"",
            "'",
            "",
        ] {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(text)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
        }
    }

    #[test]
    fn arguments_for_new_and_resumed_sessions() {
        let settings = Path::new("/r/hooks-settings.json");
        let args = headless_arguments(&spec(|_| {}), settings, &[]).join(" ");
        assert_eq!(
            args,
            "-p --input-format stream-json --output-format stream-json --verbose \
             --dangerously-skip-permissions --session-id 6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e \
             --settings /r/hooks-settings.json"
        );
        let resumed = spec(|v| {
            v["resume"] = true.into();
            v["model"] = "claude-sonnet-4-5".into();
            v["max_turns"] = 4.into();
        });
        let args = headless_arguments(&resumed, settings, &[]).join(" ");
        assert!(args.contains("--resume 6f1c2d3e-"), "{args}");
        assert!(!args.contains("--session-id"), "{args}");
        assert!(
            args.ends_with("--model claude-sonnet-4-5 --max-turns 4"),
            "{args}"
        );
        let fenced = spec(|v| v["max_budget_usd"] = 2.5.into());
        let args = headless_arguments(&fenced, settings, &[]).join(" ");
        assert!(args.ends_with("--max-budget-usd 2.500000"), "{args}");
        let plugins = [
            PathBuf::from("/c/plugins/a"),
            PathBuf::from("/c/plugins/b c"),
        ];
        let args = headless_arguments(&spec(|_| {}), settings, &plugins);
        let joined = args.join(" ");
        assert!(
            joined.ends_with("--plugin-dir /c/plugins/a --plugin-dir /c/plugins/b c"),
            "{joined}"
        );
        let args = interactive_arguments(&spec(|_| {}), settings, &plugins).join(" ");
        assert!(args.contains("--plugin-dir /c/plugins/a"), "{args}");
    }

    #[test]
    fn environment_drops_parhelia_variables_and_adds_claude_settings() {
        let agent: Vec<(OsString, OsString)> = [
            ("PATH", "/usr/bin"),
            ("PARHELIA_SESSION_SECRET", "s3cret"),
            ("PARHELIA_ANYTHING", "x"),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:1"),
            ("TMUX", "/tmp/tmux-0/default,1,0"),
            ("DISABLE_TELEMETRY", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let env = environment(agent, Path::new("/c/cfg"), true);
        let get = |key: &str| {
            env.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("PATH").as_deref(), Some("/usr/bin"));
        assert_eq!(
            get("ANTHROPIC_BASE_URL").as_deref(),
            Some("http://127.0.0.1:1")
        );
        assert_eq!(get("PARHELIA_SESSION_SECRET"), None);
        assert_eq!(get("PARHELIA_ANYTHING"), None);
        assert_eq!(get("TMUX"), None);
        assert_eq!(get("CLAUDE_CONFIG_DIR").as_deref(), Some("/c/cfg"));
        assert_eq!(get("DISABLE_TELEMETRY").as_deref(), Some("1"));
        assert_eq!(get("IS_SANDBOX").as_deref(), Some("1"));
        assert_eq!(
            env.iter().filter(|(k, _)| k == "DISABLE_TELEMETRY").count(),
            1
        );
        let env = environment(Vec::new(), Path::new("/c"), false);
        assert!(!env.iter().any(|(k, _)| k == "IS_SANDBOX"));
    }

    #[test]
    fn config_dir_is_seeded_and_existing_settings_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("claude-config");
        let workspace = dir.path().join("workspace");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::create_dir_all(&workspace).unwrap();
        std::fs::write(config.join("settings.json"), r#"{"model":"opus"}"#).unwrap();

        let key = Some("sk-test-0123456789abcdefghijklmnopqrstuvwxyz");
        prepare_config_dir(&config, &workspace, key).unwrap();
        prepare_config_dir(&config, &workspace, key).unwrap(); // idempotent

        let read = |name: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(config.join(name)).unwrap()).unwrap()
        };
        let settings = read("settings.json");
        assert_eq!(settings["model"], "opus");
        assert_eq!(settings["cleanupPeriodDays"], 36500);
        let state = read(".claude.json");
        assert_eq!(state["hasCompletedOnboarding"], true);
        let key = workspace.to_string_lossy().into_owned();
        assert_eq!(state["projects"][&key]["hasTrustDialogAccepted"], true);
        assert_eq!(
            state["customApiKeyResponses"]["approved"],
            serde_json::json!(["ghijklmnopqrstuvwxyz"])
        );

        std::fs::write(config.join("settings.json"), "[1]").unwrap();
        let err = prepare_config_dir(&config, &workspace, None).unwrap_err();
        assert!(err.to_string().contains("not a JSON object"), "{err}");

        // A link the session planted (the agent may be root, it not): never read through,
        // so nothing outside the config dir is merged into it.
        let outside = dir.path().join("outside.json");
        std::fs::write(&outside, r#"{"secret": "root's"}"#).unwrap();
        std::fs::remove_file(config.join("settings.json")).unwrap();
        std::os::unix::fs::symlink(&outside, config.join("settings.json")).unwrap();
        assert!(prepare_config_dir(&config, &workspace, None).is_err());
        assert_eq!(
            std::fs::read_to_string(&outside).unwrap(),
            r#"{"secret": "root's"}"#
        );
        assert!(
            std::fs::symlink_metadata(config.join("settings.json"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn user_messages_are_one_json_line() {
        let line = user_message_line("two\nlines and \"quotes\"");
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["type"], "user");
        assert_eq!(value["message"]["content"], "two\nlines and \"quotes\"");
    }

    #[test]
    fn executable_check() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("claude");
        assert!(not_executable_reason(&missing).is_some());
        std::fs::write(&missing, "#!/bin/sh\n").unwrap();
        assert!(
            not_executable_reason(&missing)
                .unwrap()
                .contains("not executable")
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&missing, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(not_executable_reason(&missing), None);
        assert!(
            not_executable_reason(dir.path())
                .unwrap()
                .contains("not a file")
        );
    }
}
