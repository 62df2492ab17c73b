//! `parhelia integrate claude-code`: installs the Claude Code plugin in
//! `integrations/claude-code/` (compiled into the binary) into the user's
//! Claude Code setup: its slash commands into `~/.claude/commands/`, its
//! skills into `~/.claude/skills/`, and the `parhelia` MCP server into
//! `~/.claude.json`'s `mcpServers` (user scope). `$CLAUDE_CONFIG_DIR`
//! moves all of that as it does for Claude Code.
//!
//! Idempotent; a file of the user's that differs from ours is left alone
//! (and reported) unless `--force`, which keeps a `.parhelia-backup` copy.
//! `--dry-run` prints what it would do and writes nothing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Serialize;
use serde_json::{Value, json};

use crate::cli::Ctx;
use crate::error::coded;
use crate::error_codes;

#[derive(Subcommand, Debug)]
pub enum IntegrateCommand {
    /// Install Parhelia's slash commands (/parhelia-submit, -status,
    /// -attach, -session, -checkpoint, -budget), its skills and its MCP
    /// server into your Claude Code setup (~/.claude, ~/.claude.json)
    #[command(name = "claude-code")]
    ClaudeCode {
        /// Print what would be written; write nothing
        #[arg(long)]
        dry_run: bool,
        /// Replace files of yours that differ from Parhelia's (a
        /// `.parhelia-backup` copy of each is kept)
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
}

/// The plugin's files, as they are in `integrations/claude-code/`
/// (path relative to the plugin directory, contents).
pub const PLUGIN_FILES: &[(&str, &str)] = &[
    (
        ".claude-plugin/plugin.json",
        include_str!("../../../integrations/claude-code/.claude-plugin/plugin.json"),
    ),
    (
        ".mcp.json",
        include_str!("../../../integrations/claude-code/.mcp.json"),
    ),
    (
        "commands/parhelia-submit.md",
        include_str!("../../../integrations/claude-code/commands/parhelia-submit.md"),
    ),
    (
        "commands/parhelia-status.md",
        include_str!("../../../integrations/claude-code/commands/parhelia-status.md"),
    ),
    (
        "commands/parhelia-attach.md",
        include_str!("../../../integrations/claude-code/commands/parhelia-attach.md"),
    ),
    (
        "commands/parhelia-session.md",
        include_str!("../../../integrations/claude-code/commands/parhelia-session.md"),
    ),
    (
        "commands/parhelia-checkpoint.md",
        include_str!("../../../integrations/claude-code/commands/parhelia-checkpoint.md"),
    ),
    (
        "commands/parhelia-budget.md",
        include_str!("../../../integrations/claude-code/commands/parhelia-budget.md"),
    ),
    (
        "skills/discover-parhelia/SKILL.md",
        include_str!("../../../integrations/claude-code/skills/discover-parhelia/SKILL.md"),
    ),
    (
        "skills/parhelia-task-dispatch/SKILL.md",
        include_str!("../../../integrations/claude-code/skills/parhelia-task-dispatch/SKILL.md"),
    ),
];

/// The MCP server entry (the seeds' snippet).
pub fn mcp_server_entry() -> Value {
    json!({"command": "parhelia", "args": ["mcp-server"]})
}

/// What happened (or would) to one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Unchanged,
    /// The user's differs; left alone.
    SkipDiffers,
    /// The user's differed; replaced (with a backup).
    Replace,
    /// Our entry added to the user's file, every other key kept (with a backup).
    Merge,
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub path: PathBuf,
    pub action: Action,
    #[serde(skip)]
    contents: Vec<u8>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub claude_dir: PathBuf,
    pub claude_json: PathBuf,
    pub steps: Vec<Step>,
    /// `parhelia` is not on PATH: Claude Code could not start the MCP server.
    pub parhelia_on_path: bool,
}

/// Where Claude Code keeps its user configuration: `$CLAUDE_CONFIG_DIR`,
/// else `$HOME/.claude` (and `.claude.json` beside it / inside it).
pub fn targets() -> Result<crate::config_sync::ConfigSource> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            coded(
                error_codes::INVALID_INPUT,
                "HOME is not set: cannot find your Claude Code setup",
            )
        })?;
    let dir = std::env::var_os("CLAUDE_CONFIG_DIR").map(PathBuf::from);
    Ok(crate::config_sync::ConfigSource::from_env(
        &home,
        dir.as_deref(),
    ))
}

/// Plans the install into `claude_dir` / `claude_json`: each file's action.
pub fn plan(claude_dir: &Path, claude_json: &Path, force: bool) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for (rel, contents) in PLUGIN_FILES {
        let target = if let Some(rest) = rel.strip_prefix("commands/") {
            claude_dir.join("commands").join(rest)
        } else if let Some(rest) = rel.strip_prefix("skills/") {
            claude_dir.join("skills").join(rest)
        } else {
            // The plugin manifest and its .mcp.json: the MCP server goes
            // into .claude.json instead (user scope).
            continue;
        };
        steps.push(file_step(target, contents.as_bytes().to_vec(), force)?);
    }
    steps.push(claude_json_step(claude_json, force)?);
    Ok(steps)
}

fn file_step(path: PathBuf, contents: Vec<u8>, force: bool) -> Result<Step> {
    let action = match std::fs::read(&path) {
        Ok(existing) if existing == contents => Action::Unchanged,
        Ok(_) if force => Action::Replace,
        Ok(_) => Action::SkipDiffers,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Action::Create,
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    Ok(Step {
        path,
        action,
        contents,
    })
}

fn claude_json_step(path: &Path, force: bool) -> Result<Step> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let mut doc: Value = match &existing {
        Some(text) if !text.trim().is_empty() => serde_json::from_str(text).map_err(|e| {
            coded(
                error_codes::INVALID_INPUT,
                format!(
                    "{} is not valid JSON ({e}); nothing was changed: fix it or add the MCP server with `claude mcp add --scope user parhelia -- parhelia mcp-server`",
                    path.display()
                ),
            )
        })?,
        _ => json!({}),
    };
    let Some(obj) = doc.as_object_mut() else {
        return Err(coded(
            error_codes::INVALID_INPUT,
            format!(
                "{} is not a JSON object; nothing was changed",
                path.display()
            ),
        ));
    };
    let servers = obj.entry("mcpServers").or_insert_with(|| json!({}));
    let Some(servers) = servers.as_object_mut() else {
        return Err(coded(
            error_codes::INVALID_INPUT,
            format!(
                "{}: `mcpServers` is not an object; nothing was changed",
                path.display()
            ),
        ));
    };
    let ours = mcp_server_entry();
    let action = match servers.get("parhelia") {
        Some(current) if *current == ours => Action::Unchanged,
        Some(_) if !force => Action::SkipDiffers,
        Some(_) => Action::Replace,
        None if existing.is_some() => Action::Merge,
        None => Action::Create,
    };
    servers.insert("parhelia".into(), ours);
    let mut contents = serde_json::to_vec_pretty(&doc)?;
    contents.push(b'\n');
    Ok(Step {
        path: path.to_path_buf(),
        action,
        contents,
    })
}

/// Carries out the steps (not `SkipDiffers` / `Unchanged` ones).
pub fn apply(steps: &[Step]) -> Result<()> {
    for step in steps {
        match step.action {
            Action::Unchanged | Action::SkipDiffers => continue,
            Action::Replace | Action::Merge => {
                let backup = backup_path(&step.path);
                std::fs::copy(&step.path, &backup)
                    .with_context(|| format!("backing up {}", step.path.display()))?;
            }
            Action::Create => {}
        }
        if let Some(parent) = step.path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let name = step
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = step.path.with_file_name(format!(".{name}.parhelia-tmp"));
        std::fs::write(&tmp, &step.contents)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &step.path)
            .with_context(|| format!("writing {}", step.path.display()))?;
    }
    Ok(())
}

fn backup_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{name}.parhelia-backup"))
}

/// `parhelia integrate …`.
pub fn run(_ctx: &Ctx, command: IntegrateCommand) -> Result<i32> {
    let IntegrateCommand::ClaudeCode {
        dry_run,
        force,
        json,
    } = command;
    let source = targets()?;
    let steps = plan(&source.claude_dir, &source.claude_json, force)?;
    if !dry_run {
        apply(&steps)?;
    }
    let report = Report {
        dry_run,
        claude_dir: source.claude_dir.clone(),
        claude_json: source.claude_json.clone(),
        parhelia_on_path: which::which("parhelia").is_ok(),
        steps,
    };
    if json {
        crate::cli::print_json(&report)?;
    } else {
        crate::cli::write_stdout(format_args!("{}", report_text(&report)));
    }
    Ok(0)
}

/// The human-readable report.
pub fn report_text(report: &Report) -> String {
    let mut out = String::new();
    if report.dry_run {
        out.push_str("dry run: nothing was written\n");
    }
    for step in &report.steps {
        let what = match (&step.action, report.dry_run) {
            (Action::Create, false) => "created",
            (Action::Create, true) => "would create",
            (Action::Unchanged, _) => "unchanged",
            (Action::SkipDiffers, _) => {
                "skipped: yours differs (--force replaces it, keeping a .parhelia-backup)"
            }
            (Action::Replace, false) => "updated (previous kept as .parhelia-backup)",
            (Action::Replace, true) => "would update (previous kept as .parhelia-backup)",
            (Action::Merge, false) => {
                "added (other entries kept; previous kept as .parhelia-backup)"
            }
            (Action::Merge, true) => {
                "would add (other entries kept; previous kept as .parhelia-backup)"
            }
        };
        let extra = if step.path == report.claude_json {
            " (mcpServers.parhelia)"
        } else {
            ""
        };
        out.push_str(&format!("{}{extra}: {what}\n", step.path.display()));
    }
    if !report.parhelia_on_path {
        out.push_str(
            "note: `parhelia` is not on PATH; Claude Code starts the MCP server as `parhelia mcp-server`, so put it there\n",
        );
    }
    if !report.dry_run {
        out.push_str(
            "in Claude Code: /parhelia-status, /parhelia-submit …; tools: mcp__parhelia__*\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_leaves_differing_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let claude_dir = dir.path().join(".claude");
        let claude_json = dir.path().join(".claude.json");
        std::fs::write(
            &claude_json,
            r#"{"numStartups": 3, "mcpServers": {"other": {"command": "x"}}}"#,
        )
        .unwrap();
        let steps = plan(&claude_dir, &claude_json, false).unwrap();
        assert!(steps.iter().all(|s| s.action != Action::Unchanged));
        apply(&steps).unwrap();
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&claude_json).unwrap()).unwrap();
        assert_eq!(doc["numStartups"], 3);
        assert_eq!(doc["mcpServers"]["other"]["command"], "x");
        assert_eq!(doc["mcpServers"]["parhelia"], mcp_server_entry());
        assert!(claude_dir.join("commands/parhelia-submit.md").is_file());
        assert!(
            claude_dir
                .join("skills/discover-parhelia/SKILL.md")
                .is_file()
        );
        let again = plan(&claude_dir, &claude_json, false).unwrap();
        assert!(
            again.iter().all(|s| s.action == Action::Unchanged),
            "{again:?}"
        );
        // A user's own edit is kept, unless --force.
        let status = claude_dir.join("commands/parhelia-status.md");
        std::fs::write(&status, "mine").unwrap();
        let steps = plan(&claude_dir, &claude_json, false).unwrap();
        apply(&steps).unwrap();
        assert_eq!(std::fs::read_to_string(&status).unwrap(), "mine");
        let steps = plan(&claude_dir, &claude_json, true).unwrap();
        apply(&steps).unwrap();
        assert_ne!(std::fs::read_to_string(&status).unwrap(), "mine");
        assert_eq!(
            std::fs::read_to_string(backup_path(&status)).unwrap(),
            "mine"
        );
    }

    #[test]
    fn the_plugin_has_the_seeds_commands() {
        for name in [
            "submit",
            "status",
            "attach",
            "session",
            "checkpoint",
            "budget",
        ] {
            let rel = format!("commands/parhelia-{name}.md");
            assert!(PLUGIN_FILES.iter().any(|(p, _)| *p == rel), "{rel} missing");
        }
        let mcp: Value = serde_json::from_str(
            PLUGIN_FILES
                .iter()
                .find(|(p, _)| *p == ".mcp.json")
                .unwrap()
                .1,
        )
        .unwrap();
        assert_eq!(mcp["mcpServers"]["parhelia"], mcp_server_entry());
    }
}
