//! Seeding Claude Code's config dir from the user's synced configuration.
//!
//! The coordinator's config sync (`coordinator/src/config_sync.rs`) puts the user's
//! Claude Code configuration on the volume: `settings.json` (secrets removed),
//! `CLAUDE.md`, `rules/`, `commands/`, `agents/`, `skills/`, `output-styles/`, `plugins/`
//! and `mcp-servers.json` (`{"mcpServers": {...}}`, from `.claude.json`). The spec names
//! that directory as `claude_config_seed` (locally the backend writes the same planned
//! files to `containers/<cid>/user-config/` at each launch, `docs/formats/session-home.md`);
//! before Claude Code starts, [`apply`] copies it
//! into `claude_config_dir` and [`plugin_dirs`] finds the plugins to pass with
//! `--plugin-dir`.
//!
//! Promises:
//! - Regular files are copied (a symlink in the seed is skipped with a warning, and a
//!   symlink at a destination is replaced, never written through); nothing is written
//!   outside the config dir, and never to a protected path (the agent's hook settings).
//! - The agent's own state is never taken from a seed: `.claude.json` (pre-seeded by
//!   [`crate::claude::prepare_config_dir`]), `.credentials.json`, `projects/` (where a
//!   restored conversation lives) and the other session-data directories.
//! - `mcp-servers.json`'s `mcpServers` are merged, server by server, into
//!   `<config dir>/.claude.json`; no other key of that file is touched.
//! - A seeded `settings.json` cannot turn the agent's hooks off: `disableAllHooks` is
//!   dropped (with a warning). The agent's own keys are merged on top afterwards by
//!   [`crate::claude::prepare_config_dir`].
//! - A missing seed dir is not an error ([`SeedOutcome::Missing`]); the caller journals
//!   it as a warning. Only failing to write into the config dir is an error.

use std::path::{Path, PathBuf};

use crate::claude::{LaunchError, merge_json_object, write_atomically};

/// The generated file holding the user's MCP servers.
pub const MCP_SERVERS_FILE: &str = "mcp-servers.json";
/// How deep below `<config dir>/plugins/` plugin directories are looked for.
pub const PLUGIN_SEARCH_DEPTH: usize = 5;

/// Top-level names of a seed that are never copied (the agent's own state, or
/// things a config seed must not carry), with the reason given in the warning.
const NOT_COPIED: &[(&str, &str)] = &[
    (".claude.json", "the agent pre-seeds its own"),
    (".credentials.json", "credentials never come from a seed"),
    ("projects", "session data"),
    ("sessions", "session data"),
    ("session-env", "session data"),
    ("shell-snapshots", "session data"),
    ("todos", "session data"),
    ("statsig", "machine ids"),
];

/// `settings.json` keys a seed may not set, because they would silence the agent.
const AGENT_OWNED_SETTINGS: &[&str] = &["disableAllHooks"];

/// What [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeedReport {
    /// Files copied into the config dir.
    pub files_copied: usize,
    /// MCP servers merged into `.claude.json`, by name.
    pub mcp_servers: Vec<String>,
    /// Things skipped or dropped, each a sentence for the journal.
    pub warnings: Vec<String>,
}

/// The result of [`apply`].
#[derive(Clone, Debug, PartialEq)]
pub enum SeedOutcome {
    /// The seed dir is not there (or is not a directory): nothing was done.
    Missing {
        reason: String,
    },
    Applied(SeedReport),
}

/// Copies the seed into `config_dir` (see the module docs). `protected` paths are
/// never written, whatever the seed holds.
pub fn apply(
    seed: &Path,
    config_dir: &Path,
    protected: &[&Path],
) -> Result<SeedOutcome, LaunchError> {
    match std::fs::metadata(seed) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Ok(SeedOutcome::Missing {
                reason: "is not a directory".into(),
            });
        }
        Err(e) => {
            return Ok(SeedOutcome::Missing {
                reason: if e.kind() == std::io::ErrorKind::NotFound {
                    "does not exist".into()
                } else {
                    format!("cannot be read: {e}")
                },
            });
        }
    }
    std::fs::create_dir_all(config_dir).map_err(io_error("create", config_dir))?;
    let mut report = SeedReport::default();
    let mut walker = walkdir::WalkDir::new(seed)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    while let Some(next) = walker.next() {
        let entry = match next {
            Ok(entry) => entry,
            Err(e) => {
                report
                    .warnings
                    .push(format!("config seed: skipped an unreadable entry: {e}"));
                continue;
            }
        };
        let Ok(rel) = entry.path().strip_prefix(seed) else {
            continue;
        };
        let rel = rel.to_path_buf();
        let is_dir = entry.file_type().is_dir();
        if entry.depth() == 1 {
            let name = entry.file_name().to_string_lossy();
            if let Some((_, why)) = NOT_COPIED.iter().find(|(n, _)| *n == name) {
                report
                    .warnings
                    .push(format!("config seed: {name} was not copied ({why})"));
                if is_dir {
                    walker.skip_current_dir();
                }
                continue;
            }
            if name == MCP_SERVERS_FILE && entry.file_type().is_file() {
                merge_mcp_servers(entry.path(), config_dir, &mut report)?;
                continue;
            }
        }
        let dest = config_dir.join(&rel);
        if protected.iter().any(|p| *p == dest) {
            report.warnings.push(format!(
                "config seed: {} was not copied (the agent's own file)",
                rel.display()
            ));
            continue;
        }
        if entry.file_type().is_symlink() {
            report.warnings.push(format!(
                "config seed: {} was not copied (a symlink)",
                rel.display()
            ));
            continue;
        }
        if is_dir {
            make_dir(&dest, &rel, &mut report, &mut walker)?;
            continue;
        }
        if !entry.file_type().is_file() {
            report.warnings.push(format!(
                "config seed: {} was not copied (not a regular file)",
                rel.display()
            ));
            continue;
        }
        if entry.depth() == 1 && rel == Path::new("settings.json") {
            copy_settings(entry.path(), &dest, &mut report)?;
        } else {
            copy_file(entry.path(), &dest, &rel, &mut report)?;
        }
    }
    Ok(SeedOutcome::Applied(report))
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LaunchError {
    let path = path.to_path_buf();
    move |source| LaunchError::Io {
        action,
        path,
        source,
    }
}

/// Makes `dest` a real directory (a symlink there is replaced; a file there wins, and
/// the seed's subtree is skipped with a warning).
fn make_dir(
    dest: &Path,
    rel: &Path,
    report: &mut SeedReport,
    walker: &mut walkdir::IntoIter,
) -> Result<(), LaunchError> {
    match std::fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::remove_file(dest).map_err(io_error("remove", dest))?;
        }
        Ok(_) => {
            report.warnings.push(format!(
                "config seed: {} was not copied (a file of that name exists)",
                rel.display()
            ));
            walker.skip_current_dir();
            return Ok(());
        }
        Err(_) => {}
    }
    std::fs::create_dir(dest).map_err(io_error("create", dest))
}

fn copy_file(
    src: &Path,
    dest: &Path,
    rel: &Path,
    report: &mut SeedReport,
) -> Result<(), LaunchError> {
    match std::fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            report.warnings.push(format!(
                "config seed: {} was not copied (a directory of that name exists)",
                rel.display()
            ));
            return Ok(());
        }
        // Never write through a link: replace it.
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::remove_file(dest).map_err(io_error("remove", dest))?;
        }
        _ => {}
    }
    std::fs::copy(src, dest).map_err(io_error("copy to", dest))?;
    report.files_copied += 1;
    Ok(())
}

/// `settings.json`: the seed's, minus the keys that would silence the agent.
fn copy_settings(src: &Path, dest: &Path, report: &mut SeedReport) -> Result<(), LaunchError> {
    let mut settings = match std::fs::read(src)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    {
        Some(serde_json::Value::Object(map)) => map,
        _ => {
            report
                .warnings
                .push("config seed: settings.json was not copied (not a JSON object)".to_string());
            return Ok(());
        }
    };
    for key in AGENT_OWNED_SETTINGS {
        if settings.remove(*key).is_some() {
            report.warnings.push(format!(
                "config seed: settings.json's {key} was dropped (the agent's hooks must run)"
            ));
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(dest)
        && meta.file_type().is_symlink()
    {
        std::fs::remove_file(dest).map_err(io_error("remove", dest))?;
    }
    let text = serde_json::to_vec_pretty(&serde_json::Value::Object(settings))
        .expect("a JSON map always serializes");
    write_atomically(dest, &text).map_err(io_error("write", dest))?;
    report.files_copied += 1;
    Ok(())
}

/// Merges `mcp-servers.json`'s `mcpServers` into `<config dir>/.claude.json`.
fn merge_mcp_servers(
    src: &Path,
    config_dir: &Path,
    report: &mut SeedReport,
) -> Result<(), LaunchError> {
    let servers = match std::fs::read(src)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    {
        Some(serde_json::Value::Object(mut map)) => match map.remove("mcpServers") {
            Some(serde_json::Value::Object(servers)) => servers,
            None => serde_json::Map::new(),
            Some(_) => {
                report.warnings.push(format!(
                    "config seed: {MCP_SERVERS_FILE} was ignored (mcpServers is not an object)"
                ));
                return Ok(());
            }
        },
        _ => {
            report.warnings.push(format!(
                "config seed: {MCP_SERVERS_FILE} was ignored (not a JSON object)"
            ));
            return Ok(());
        }
    };
    if servers.is_empty() {
        return Ok(());
    }
    let state = config_dir.join(".claude.json");
    if let Ok(meta) = std::fs::symlink_metadata(&state)
        && meta.file_type().is_symlink()
    {
        std::fs::remove_file(&state).map_err(io_error("remove", &state))?;
    }
    merge_json_object(&state, |state| {
        let existing = state
            .entry("mcpServers")
            .or_insert_with(|| serde_json::json!({}));
        if !existing.is_object() {
            *existing = serde_json::json!({});
        }
        let existing = existing.as_object_mut().expect("made an object above");
        for (name, server) in servers {
            report.mcp_servers.push(name.clone());
            existing.insert(name, server);
        }
    })
}

/// The plugin directories under `<config_dir>/plugins/` to pass with `--plugin-dir`,
/// sorted. A plugin directory holds `.claude-plugin/plugin.json`.
///
/// When `plugins/installed_plugins.json` records install paths that exist here (under
/// `plugins/`, re-rooted from the machine they were recorded on), exactly those are used,
/// minus plugins `settings.json`'s `enabledPlugins` turns off; a marketplace clone holds
/// every plugin it offers, installed or not. Otherwise every plugin directory down to
/// [`PLUGIN_SEARCH_DEPTH`] levels is used, those inside `marketplaces/` only when there
/// are no others.
pub fn plugin_dirs(config_dir: &Path) -> Vec<PathBuf> {
    let root = config_dir.join("plugins");
    if !root.is_dir() {
        return Vec::new();
    }
    if let Some(installed) = installed_plugin_dirs(config_dir, &root) {
        return installed;
    }
    let mut found = Vec::new();
    let mut walker = walkdir::WalkDir::new(&root)
        .max_depth(PLUGIN_SEARCH_DEPTH)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    while let Some(Ok(entry)) = walker.next() {
        if !entry.file_type().is_dir() {
            continue;
        }
        let name = entry.file_name();
        if name == ".git" || name == ".claude-plugin" || name == "node_modules" {
            walker.skip_current_dir();
            continue;
        }
        if is_plugin_dir(entry.path()) {
            found.push(entry.path().to_path_buf());
            walker.skip_current_dir();
        }
    }
    let marketplaces = root.join("marketplaces");
    if found.iter().any(|p| !p.starts_with(&marketplaces)) {
        found.retain(|p| !p.starts_with(&marketplaces));
    }
    found.sort();
    found
}

fn is_plugin_dir(dir: &Path) -> bool {
    dir.join(".claude-plugin").join("plugin.json").is_file()
}

/// The plugins `installed_plugins.json` names, re-rooted under `root`; None when the
/// file is missing or names none that exist here.
fn installed_plugin_dirs(config_dir: &Path, root: &Path) -> Option<Vec<PathBuf>> {
    let bytes = std::fs::read(root.join("installed_plugins.json")).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let plugins = value.get("plugins")?.as_object()?;
    let disabled: Vec<String> = std::fs::read(config_dir.join("settings.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|s| s.get("enabledPlugins").and_then(|e| e.as_object()).cloned())
        .map(|enabled| {
            enabled
                .into_iter()
                .filter(|(_, on)| on == &serde_json::Value::Bool(false))
                .map(|(id, _)| id)
                .collect()
        })
        .unwrap_or_default();
    let mut found = Vec::new();
    let mut any_here = false;
    for (id, record) in plugins {
        let mut paths = Vec::new();
        install_paths(record, &mut paths);
        let here: Vec<PathBuf> = paths
            .iter()
            .filter_map(|p| reroot(root, Path::new(p)))
            .collect();
        any_here |= !here.is_empty();
        if !disabled.contains(id) {
            found.extend(here);
        }
    }
    if !any_here {
        return None;
    }
    found.sort();
    found.dedup();
    Some(found)
}

/// Every `installPath` string in a record (version 1: an object; version 2: a list).
fn install_paths(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("installPath", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => install_paths(v, out),
                }
            }
        }
        serde_json::Value::Array(list) => list.iter().for_each(|v| install_paths(v, out)),
        _ => {}
    }
}

/// `/home/u/.claude/plugins/cache/m/p/1.0` → `<root>/cache/m/p/1.0`, if that is a
/// plugin directory here (the first `plugins` component that gives one wins).
fn reroot(root: &Path, recorded: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let parts: Vec<Component> = recorded.components().collect();
    for (i, part) in parts.iter().enumerate() {
        if part.as_os_str() != "plugins" {
            continue;
        }
        let rest = &parts[i + 1..];
        if rest.is_empty() || !rest.iter().all(|c| matches!(c, Component::Normal(_))) {
            continue;
        }
        let candidate: PathBuf = rest.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        if is_plugin_dir(&candidate) {
            return Some(candidate);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn read_json(path: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// A seed as the coordinator's config sync writes it.
    fn seed(dir: &Path) -> PathBuf {
        let seed = dir.join("seed");
        write(
            &seed.join("settings.json"),
            r#"{"model":"opus","disableAllHooks":true,"cleanupPeriodDays":7,
                "hooks":{"Stop":[{"hooks":[{"type":"command","command":"true"}]}]}}"#,
        );
        write(&seed.join("CLAUDE.md"), "Be brief.\n");
        write(&seed.join("commands/x.md"), "Do x.\n");
        write(&seed.join("skills/a/SKILL.md"), "A\n");
        write(
            &seed.join(MCP_SERVERS_FILE),
            r#"{"mcpServers":{"github":{"command":"github-mcp"},"docs":{"type":"http","url":"https://d/"}}}"#,
        );
        write(
            &seed.join(".claude.json"),
            r#"{"hasCompletedOnboarding":false}"#,
        );
        write(&seed.join("projects/-x/1.jsonl"), "{}\n");
        write(
            &seed.join("plugins/cache/mkt/demo/1.0.0/.claude-plugin/plugin.json"),
            r#"{"name":"demo"}"#,
        );
        write(
            &seed.join("plugins/cache/mkt/demo/1.0.0/commands/d.md"),
            "Demo.\n",
        );
        seed
    }

    #[test]
    fn files_land_and_mcp_servers_are_merged() {
        let dir = tempfile::tempdir().unwrap();
        let seed = seed(dir.path());
        let config = dir.path().join("claude-config");
        let workspace = dir.path().join("workspace");
        std::fs::create_dir_all(&workspace).unwrap();
        // What the agent had already (a restored conversation, an existing server).
        write(&config.join("projects/-w/conv.jsonl"), "mine\n");
        write(
            &config.join(".claude.json"),
            r#"{"userID":"container","mcpServers":{"local":{"command":"l"},"github":{"command":"old"}}}"#,
        );
        let hooks = dir.path().join("runtime/hooks-settings.json");
        write(&hooks, "{\"hooks\":\"the agent's\"}");

        let SeedOutcome::Applied(report) = apply(&seed, &config, &[&hooks]).unwrap() else {
            panic!("seed not applied")
        };
        crate::claude::prepare_config_dir(&config, &workspace, None).unwrap();

        assert_eq!(
            std::fs::read(config.join("CLAUDE.md")).unwrap(),
            b"Be brief.\n"
        );
        assert_eq!(
            std::fs::read(config.join("commands/x.md")).unwrap(),
            b"Do x.\n"
        );
        assert!(config.join("skills/a/SKILL.md").is_file());
        assert!(
            config
                .join("plugins/cache/mkt/demo/1.0.0/commands/d.md")
                .is_file()
        );
        assert!(!config.join(MCP_SERVERS_FILE).exists());
        assert_eq!(
            std::fs::read(config.join("projects/-w/conv.jsonl")).unwrap(),
            b"mine\n"
        );
        assert!(!config.join("projects/-x").exists());
        assert_eq!(report.files_copied, 6);
        assert_eq!(report.mcp_servers, ["docs", "github"]);

        let state = read_json(&config.join(".claude.json"));
        assert_eq!(state["userID"], "container");
        assert_eq!(state["hasCompletedOnboarding"], true);
        assert_eq!(state["mcpServers"]["local"]["command"], "l");
        assert_eq!(state["mcpServers"]["github"]["command"], "github-mcp");
        assert_eq!(state["mcpServers"]["docs"]["url"], "https://d/");

        // The user's settings are there, with the agent's keys on top and no way to
        // turn the agent's hooks off; the agent's hook file is untouched.
        let settings = read_json(&config.join("settings.json"));
        assert_eq!(settings["model"], "opus");
        assert_eq!(settings["cleanupPeriodDays"], 36500);
        assert_eq!(settings["skipDangerousModePermissionPrompt"], true);
        assert!(settings.get("disableAllHooks").is_none());
        assert_eq!(
            std::fs::read(&hooks).unwrap(),
            b"{\"hooks\":\"the agent's\"}"
        );
        let warnings = report.warnings.join("\n");
        assert!(warnings.contains("disableAllHooks"), "{warnings}");
        assert!(
            warnings.contains(".claude.json was not copied"),
            "{warnings}"
        );
        assert!(warnings.contains("projects was not copied"), "{warnings}");
    }

    #[test]
    fn hooks_are_not_clobbered_even_inside_the_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed");
        write(&seed.join("hooks-settings.json"), "{\"evil\":true}");
        write(&seed.join("commands/y.md"), "Y\n");
        let config = dir.path().join("cfg");
        let hooks = config.join("hooks-settings.json");
        write(&hooks, "{\"ours\":true}");
        let SeedOutcome::Applied(report) = apply(&seed, &config, &[&hooks]).unwrap() else {
            panic!()
        };
        assert_eq!(std::fs::read(&hooks).unwrap(), b"{\"ours\":true}");
        assert_eq!(report.files_copied, 1);
        assert!(report.warnings[0].contains("the agent's own file"));
    }

    #[test]
    fn links_are_neither_followed_nor_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.txt");
        write(&outside, "untouched");
        let seed = dir.path().join("seed");
        write(&seed.join("CLAUDE.md"), "new");
        std::os::unix::fs::symlink(&outside, seed.join("rules")).unwrap();
        let config = dir.path().join("cfg");
        std::fs::create_dir_all(&config).unwrap();
        std::os::unix::fs::symlink(&outside, config.join("CLAUDE.md")).unwrap();
        let SeedOutcome::Applied(report) = apply(&seed, &config, &[]).unwrap() else {
            panic!()
        };
        assert_eq!(std::fs::read(&outside).unwrap(), b"untouched");
        assert_eq!(std::fs::read(config.join("CLAUDE.md")).unwrap(), b"new");
        assert!(!config.join("rules").exists());
        assert!(report.warnings.iter().any(|w| w.contains("a symlink")));
    }

    #[test]
    fn a_missing_seed_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cfg");
        let outcome = apply(&dir.path().join("nope"), &config, &[]).unwrap();
        assert_eq!(
            outcome,
            SeedOutcome::Missing {
                reason: "does not exist".into()
            }
        );
        assert!(!config.exists());
    }

    #[test]
    fn plugin_dirs_are_found_to_depth_five() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path();
        let plugin = |rel: &str| {
            write(
                &config
                    .join("plugins")
                    .join(rel)
                    .join(".claude-plugin/plugin.json"),
                "{}",
            );
            config.join("plugins").join(rel)
        };
        assert!(plugin_dirs(config).is_empty());
        let top = plugin("mine");
        let deep = plugin("cache/mkt/demo/1.0.0");
        let depth5 = plugin("a/b/c/d/e");
        plugin("a/b/c/d/e2/f"); // depth 6: too deep
        plugin("mine/nested"); // inside a plugin: not a plugin of its own
        // A marketplace clone offers plugins that are not installed.
        let offered = plugin("marketplaces/mkt/plugins/other");
        write(
            &config.join("plugins/marketplaces/mkt/.claude-plugin/marketplace.json"),
            "{}",
        );
        let found = plugin_dirs(config);
        assert_eq!(found, [depth5.clone(), deep.clone(), top.clone()]);
        assert!(!found.contains(&offered));

        // Only marketplace clones: they are what there is.
        let only = tempfile::tempdir().unwrap();
        let p = only.path().join("plugins/marketplaces/mkt/plugins/x");
        write(&p.join(".claude-plugin/plugin.json"), "{}");
        assert_eq!(plugin_dirs(only.path()), [p]);
    }

    #[test]
    fn installed_plugins_decide_when_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path();
        for rel in [
            "cache/mkt/demo/1.0.0",
            "cache/mkt/demo/0.9.0",
            "cache/mkt/off/1.0.0",
            "marketplaces/mkt/plugins/demo",
        ] {
            write(
                &config
                    .join("plugins")
                    .join(rel)
                    .join(".claude-plugin/plugin.json"),
                "{}",
            );
        }
        write(
            &config.join("plugins/installed_plugins.json"),
            r#"{"version":2,"plugins":{
                "demo@mkt":[{"scope":"user","installPath":"/home/plugins/.claude/plugins/cache/mkt/demo/1.0.0","version":"1.0.0"}],
                "off@mkt":[{"scope":"user","installPath":"/home/u/.claude/plugins/cache/mkt/off/1.0.0"}]}}"#,
        );
        write(
            &config.join("settings.json"),
            r#"{"enabledPlugins":{"off@mkt":false,"demo@mkt":true}}"#,
        );
        assert_eq!(
            plugin_dirs(config),
            [config.join("plugins/cache/mkt/demo/1.0.0")]
        );
    }
}
