//! Config sync: which parts of the user's Claude Code configuration go to the session
//! volume (`config/claude/`), and which never do.
//!
//! Pure planning plus reading local files; no network. [`collect`] reads the user's
//! config dir (`~/.claude`, or `$CLAUDE_CONFIG_DIR`) and `.claude.json` into a list of
//! [`SyncItem`]s and a list of [`Withheld`] things with the reason each stays home;
//! [`plan`] compares the items with the volume's [`RemoteManifest`] (kept at
//! [`MANIFEST_PATH`]) and says what to upload, delete and leave alone.
//!
//! Promises (the rules are `facts/claude-code.md`, "Config sync"):
//! - Synced: `settings.json` with its secret-bearing keys removed (a rewritten, generated
//!   copy), `CLAUDE.md`, and the directories `rules/`, `commands/`, `agents/`, `skills/`,
//!   `output-styles/`, `plugins/` (regular files, recursively; symlinks followed, loops
//!   refused; files over [`MAX_FILE_BYTES`] and `.git` directories left out).
//! - From `.claude.json` only `mcpServers`, as a generated `mcp-servers.json`
//!   (`{"mcpServers": {...}}`); each server's `env` and `headers` maps are dropped unless
//!   [`CollectOptions::include_mcp_secrets`].
//! - Never: credentials, the rest of `.claude.json`, session data, telemetry, debug logs,
//!   `history.jsonl` (unless [`CollectOptions::include_history`]), anything else at the
//!   top level. Every such thing is listed in [`Collected::withheld`] with its reason.
//! - Everything is in sorted path order, and an item's `hash` is the blake3 (hex) of
//!   exactly the bytes [`materialize`] hands over for upload.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CodedError;
use crate::error_codes;
use crate::render::bytes;

/// Where synced files live on the volume (item paths are relative to it).
pub const VOLUME_DIR: &str = "config/claude";
/// The volume's record of what was uploaded, by path and hash.
pub const MANIFEST_PATH: &str = "config/manifest.json";
/// The [`RemoteManifest::version`] this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// Files larger than this are not synced.
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;
/// The generated file holding `.claude.json`'s `mcpServers`.
pub const MCP_SERVERS_FILE: &str = "mcp-servers.json";

/// Top-level directories synced recursively.
const SYNCED_DIRS: &[&str] = &[
    "agents",
    "commands",
    "output-styles",
    "plugins",
    "rules",
    "skills",
];

/// Top-level names that never leave this machine, and why.
const NEVER_SYNCED: &[(&str, &str)] = &[
    (".credentials.json", "credentials"),
    (
        ".claude.json",
        "account and machine ids; only its mcpServers are synced (as mcp-servers.json)",
    ),
    (
        "backups",
        "account and machine ids (backups of .claude.json)",
    ),
    (
        "statsig",
        "account and machine ids (feature-flag and telemetry cache)",
    ),
    ("telemetry", "telemetry"),
    ("debug", "debug logs"),
    ("traces", "debug logs"),
    ("projects", "session data (transcripts of past sessions)"),
    ("sessions", "session data"),
    (
        "shell-snapshots",
        "session data (shell environment snapshots)",
    ),
    ("session-env", "session data"),
    ("todos", "session data"),
    ("ide", "this machine's IDE connections"),
];

/// `settings.json` keys removed because they produce or hold credentials.
const SECRET_SETTINGS_KEYS: &[(&str, &str)] = &[
    ("apiKeyHelper", "credential helper (prints an API key)"),
    (
        "awsAuthRefresh",
        "credential helper (refreshes AWS credentials)",
    ),
    (
        "awsCredentialExport",
        "credential helper (exports AWS credentials)",
    ),
];

/// `settings.json` `env` variables removed because they are credentials.
const SECRET_ENV_NAMES: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
];

/// `env` variable name endings that suggest a secret.
const SECRET_ENV_SUFFIXES: &[&str] = &["_TOKEN", "_KEY", "_SECRET", "PASSWORD"];

/// Where the user's Claude Code configuration is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSource {
    /// `~/.claude`, or `$CLAUDE_CONFIG_DIR`.
    pub claude_dir: PathBuf,
    /// `~/.claude.json`, or `$CLAUDE_CONFIG_DIR/.claude.json`.
    pub claude_json: PathBuf,
}

impl ConfigSource {
    /// The locations Claude Code itself uses, given `$HOME` and `$CLAUDE_CONFIG_DIR`.
    pub fn from_env(home: &Path, claude_config_dir_env: Option<&Path>) -> Self {
        match claude_config_dir_env.filter(|dir| !dir.as_os_str().is_empty()) {
            Some(dir) => ConfigSource {
                claude_dir: dir.to_path_buf(),
                claude_json: dir.join(".claude.json"),
            },
            None => ConfigSource {
                claude_dir: home.join(".claude"),
                claude_json: home.join(".claude.json"),
            },
        }
    }
}

/// What [`collect`] may include beyond the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectOptions {
    /// Sync `history.jsonl` (the prompt history).
    pub include_history: bool,
    /// Keep MCP servers' `env` and `headers` values (they often hold tokens).
    pub include_mcp_secrets: bool,
}

/// The bytes of one item.
#[derive(Clone, PartialEq, Eq)]
pub enum Content {
    /// A local file, uploaded as it is.
    File(PathBuf),
    /// Bytes made here (a rewritten or extracted file).
    Generated(Vec<u8>),
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::File(path) => f.debug_tuple("File").field(path).finish(),
            Content::Generated(data) => write!(f, "Generated({} bytes)", data.len()),
        }
    }
}

/// One file to have on the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncItem {
    /// Relative to the volume's [`VOLUME_DIR`], `/`-separated.
    pub path: String,
    pub content: Content,
    pub size: u64,
    /// blake3 (hex) of the bytes uploaded.
    pub hash: String,
}

/// Something that stays on this machine, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Withheld {
    /// A local path relative to the config dir, or `file: key` for a removed key.
    pub path: String,
    pub reason: String,
}

/// Everything [`collect`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub items: Vec<SyncItem>,
    pub withheld: Vec<Withheld>,
}

/// The volume's record of the synced files (at [`MANIFEST_PATH`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteManifest {
    pub version: u32,
    /// Path (relative to [`VOLUME_DIR`]) to blake3 hex.
    pub files: BTreeMap<String, String>,
}

/// What a sync does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncPlan {
    /// New or changed files.
    pub upload: Vec<SyncItem>,
    /// Paths on the volume that are no longer synced.
    pub delete: Vec<String>,
    /// Paths already on the volume with the same content.
    pub unchanged: Vec<String>,
    pub withheld: Vec<Withheld>,
    /// The manifest after the sync.
    next: RemoteManifest,
}

/// Reads the user's config and decides, file by file, what may be synced.
pub fn collect(src: &ConfigSource, opts: &CollectOptions) -> Result<Collected, CodedError> {
    let mut c = Collector::default();
    match std::fs::metadata(&src.claude_dir) {
        Ok(meta) if meta.is_dir() => c.top_level(src, opts)?,
        Ok(_) => {
            return Err(CodedError::new(
                error_codes::INVALID_INPUT,
                format!(
                    "the Claude Code config dir {} is not a directory",
                    src.claude_dir.display()
                ),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(CodedError::new(
                error_codes::INFRASTRUCTURE_ERROR,
                format!("cannot read {}: {e}", src.claude_dir.display()),
            ));
        }
    }
    let inside = src.claude_json.parent() == Some(src.claude_dir.as_path());
    c.claude_json(&src.claude_json, opts, !inside);

    let mut items = c.items;
    items.sort_by(|a, b| a.path.cmp(&b.path));
    items.dedup_by(|a, b| a.path == b.path);
    let mut withheld = c.withheld;
    withheld.sort_by(|a, b| a.path.cmp(&b.path).then(a.reason.cmp(&b.reason)));
    withheld.dedup();
    Ok(Collected { items, withheld })
}

#[derive(Default)]
struct Collector {
    items: Vec<SyncItem>,
    withheld: Vec<Withheld>,
}

impl Collector {
    fn withhold(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.withheld.push(Withheld {
            path: path.into(),
            reason: reason.into(),
        });
    }

    fn generated(&mut self, path: &str, data: Vec<u8>) {
        self.items.push(SyncItem {
            path: path.into(),
            size: data.len() as u64,
            hash: hash_hex(&data),
            content: Content::Generated(data),
        });
    }

    fn top_level(&mut self, src: &ConfigSource, opts: &CollectOptions) -> Result<(), CodedError> {
        let read_dir = std::fs::read_dir(&src.claude_dir).map_err(|e| {
            CodedError::new(
                error_codes::INFRASTRUCTURE_ERROR,
                format!("cannot read {}: {e}", src.claude_dir.display()),
            )
        })?;
        let mut names = Vec::new();
        for entry in read_dir {
            let entry = entry.map_err(|e| {
                CodedError::new(
                    error_codes::INFRASTRUCTURE_ERROR,
                    format!("cannot read {}: {e}", src.claude_dir.display()),
                )
            })?;
            names.push(entry.file_name());
        }
        names.sort();
        for name in names {
            let path = src.claude_dir.join(&name);
            let Some(name) = name.to_str() else {
                self.withhold(name.to_string_lossy(), "not configuration");
                continue;
            };
            if let Some((_, reason)) = NEVER_SYNCED.iter().find(|(n, _)| *n == name) {
                self.withhold(name, *reason);
            } else if name == "history.jsonl" {
                if opts.include_history {
                    self.file(name, &path);
                } else {
                    self.withhold(name, "prompt history (`--include-history` syncs it)");
                }
            } else if name == "settings.json" {
                self.settings(&path);
            } else if name == "CLAUDE.md" {
                self.file(name, &path);
            } else if SYNCED_DIRS.contains(&name) {
                self.tree(name, &path);
            } else {
                self.withhold(name, "not configuration");
            }
        }
        Ok(())
    }

    /// Reads a file to sync as it is (following symlinks); None when withheld.
    fn read_regular(&mut self, rel: &str, path: &Path) -> Option<(PathBuf, Vec<u8>)> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) => {
                self.withhold(rel, format!("unreadable: {e}"));
                return None;
            }
        };
        if !meta.is_file() {
            self.withhold(rel, "not a regular file");
            return None;
        }
        if meta.len() > MAX_FILE_BYTES {
            self.withhold(
                rel,
                format!(
                    "too large ({}; the limit is {})",
                    bytes(meta.len()),
                    bytes(MAX_FILE_BYTES)
                ),
            );
            return None;
        }
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        match std::fs::read(&real) {
            Ok(data) if data.len() as u64 > MAX_FILE_BYTES => {
                self.withhold(
                    rel,
                    format!("too large (the limit is {})", bytes(MAX_FILE_BYTES)),
                );
                None
            }
            Ok(data) => Some((real, data)),
            Err(e) => {
                self.withhold(rel, format!("unreadable: {e}"));
                None
            }
        }
    }

    fn file(&mut self, rel: &str, path: &Path) {
        if let Some((real, data)) = self.read_regular(rel, path) {
            self.items.push(SyncItem {
                path: rel.into(),
                size: data.len() as u64,
                hash: hash_hex(&data),
                content: Content::File(real),
            });
        }
    }

    fn tree(&mut self, top: &str, root: &Path) {
        match std::fs::metadata(root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return self.withhold(top, "not a directory"),
            Err(e) => return self.withhold(top, format!("unreadable: {e}")),
        }
        let mut walker = walkdir::WalkDir::new(root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter();
        while let Some(next) = walker.next() {
            let entry = match next {
                Ok(entry) => entry,
                Err(e) => {
                    let rel = e
                        .path()
                        .map(|p| relative(top, root, p))
                        .unwrap_or_else(|| top.to_string());
                    let reason = if e.loop_ancestor().is_some() {
                        "symlink loop".to_string()
                    } else {
                        match e.io_error() {
                            Some(io) if io.kind() == std::io::ErrorKind::NotFound => {
                                "broken symlink".to_string()
                            }
                            Some(io) => format!("unreadable: {io}"),
                            None => format!("unreadable: {e}"),
                        }
                    };
                    self.withhold(rel, reason);
                    continue;
                }
            };
            let rel = relative(top, root, entry.path());
            if entry.path().to_str().is_none() {
                self.withhold(rel, "file name is not UTF-8");
                if entry.file_type().is_dir() {
                    walker.skip_current_dir();
                }
                continue;
            }
            if entry.file_type().is_dir() {
                if entry.depth() > 0 && entry.file_name() == ".git" {
                    self.withhold(rel, "version control data");
                    walker.skip_current_dir();
                }
                continue;
            }
            if !entry.file_type().is_file() {
                self.withhold(rel, "not a regular file");
                continue;
            }
            self.file(&rel, entry.path());
        }
    }

    fn settings(&mut self, path: &Path) {
        const NAME: &str = "settings.json";
        let Some((_, data)) = self.read_regular(NAME, path) else {
            return;
        };
        let mut value = match serde_json::from_slice::<serde_json::Value>(&data) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => {
                return self.withhold(NAME, "not a JSON object, so its secrets cannot be removed");
            }
            Err(e) => {
                return self.withhold(
                    NAME,
                    format!("not valid JSON ({e}), so its secrets cannot be removed"),
                );
            }
        };
        for (key, reason) in SECRET_SETTINGS_KEYS {
            if value.remove(*key).is_some() {
                self.withhold(format!("{NAME}: {key}"), *reason);
            }
        }
        if let Some(serde_json::Value::Object(env)) = value.get_mut("env") {
            let secret: Vec<String> = env
                .keys()
                .filter(|name| secret_env_reason(name).is_some())
                .cloned()
                .collect();
            for name in secret {
                env.remove(&name);
                let reason = secret_env_reason(&name).unwrap_or_default();
                self.withhold(format!("{NAME}: env.{name}"), reason);
            }
        }
        let mut out = serde_json::to_vec_pretty(&serde_json::Value::Object(value))
            .expect("a JSON map always serializes");
        out.push(b'\n');
        self.generated(NAME, out);
    }

    /// `.claude.json`: only `mcpServers`. `list_rest` adds the withheld line for the
    /// rest of it when the top-level scan did not (the file is outside the config dir).
    fn claude_json(&mut self, path: &Path, opts: &CollectOptions, list_rest: bool) {
        const REST: &str = ".claude.json";
        let data = match std::fs::read(path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                return self.withhold(REST, format!("unreadable ({e}); mcpServers not synced"));
            }
        };
        if list_rest {
            let reason = NEVER_SYNCED
                .iter()
                .find(|(n, _)| *n == REST)
                .map(|(_, r)| *r)
                .unwrap_or("account and machine ids");
            self.withhold(REST, reason);
        }
        let servers = match serde_json::from_slice::<serde_json::Value>(&data) {
            Ok(serde_json::Value::Object(mut state)) => state.remove("mcpServers"),
            Ok(_) | Err(_) => {
                return self.withhold(REST, "not a JSON object; mcpServers not synced");
            }
        };
        let mut servers = match servers {
            None => return,
            Some(serde_json::Value::Object(servers)) => servers,
            Some(_) => {
                return self.withhold(
                    format!("{REST}: mcpServers"),
                    "not a JSON object; not synced",
                );
            }
        };
        if !opts.include_mcp_secrets {
            for (name, server) in servers.iter_mut() {
                let Some(server) = server.as_object_mut() else {
                    continue;
                };
                for field in ["env", "headers"] {
                    let Some(removed) = server.remove(field) else {
                        continue;
                    };
                    let keys = match &removed {
                        serde_json::Value::Object(map) => {
                            map.keys().cloned().collect::<Vec<_>>().join(", ")
                        }
                        _ => String::new(),
                    };
                    let what = if field == "env" {
                        "environment"
                    } else {
                        "headers"
                    };
                    let keys = if keys.is_empty() {
                        String::new()
                    } else {
                        format!(" ({keys})")
                    };
                    self.withhold(
                        format!("{MCP_SERVERS_FILE}: mcpServers.{name}.{field}"),
                        format!(
                            "MCP server {what}{keys} may hold secrets (`--include-mcp-secrets` syncs them)"
                        ),
                    );
                }
            }
        }
        let mut out = serde_json::to_vec_pretty(&serde_json::json!({ "mcpServers": servers }))
            .expect("a JSON map always serializes");
        out.push(b'\n');
        self.generated(MCP_SERVERS_FILE, out);
    }
}

/// Why a `settings.json` `env` variable is withheld, if it is.
fn secret_env_reason(name: &str) -> Option<String> {
    if SECRET_ENV_NAMES.contains(&name) {
        return Some("credential (the container gets its own)".into());
    }
    let upper = name.to_ascii_uppercase();
    SECRET_ENV_SUFFIXES
        .iter()
        .find(|suffix| upper.ends_with(*suffix))
        .map(|suffix| format!("may be a secret (its name ends in {suffix})"))
}

/// `top/<path below root>`, `/`-separated.
fn relative(top: &str, root: &Path, path: &Path) -> String {
    let mut out = top.to_string();
    if let Ok(rest) = path.strip_prefix(root) {
        for part in rest.components() {
            out.push('/');
            out.push_str(&part.as_os_str().to_string_lossy());
        }
    }
    out
}

fn hash_hex(data: &[u8]) -> String {
    parhelia_checkpoint::BlobId::of(data).to_hex()
}

/// Compares what is collected with what the volume has.
pub fn plan(collected: Collected, remote: Option<&RemoteManifest>) -> SyncPlan {
    let empty = BTreeMap::new();
    let remote_files = remote.map(|m| &m.files).unwrap_or(&empty);
    // An unknown manifest version: trust none of its hashes, but still delete its files.
    let trusted = remote.is_some_and(|m| m.version == MANIFEST_VERSION);
    let mut upload = Vec::new();
    let mut unchanged = Vec::new();
    let mut next = BTreeMap::new();
    let mut local = BTreeSet::new();
    for item in collected.items {
        local.insert(item.path.clone());
        next.insert(item.path.clone(), item.hash.clone());
        if trusted && remote_files.get(&item.path) == Some(&item.hash) {
            unchanged.push(item.path);
        } else {
            upload.push(item);
        }
    }
    let delete = remote_files
        .keys()
        .filter(|path| !local.contains(*path))
        .cloned()
        .collect();
    SyncPlan {
        upload,
        delete,
        unchanged,
        withheld: collected.withheld,
        next: RemoteManifest {
            version: MANIFEST_VERSION,
            files: next,
        },
    }
}

impl SyncPlan {
    /// The manifest to write to the volume once the plan is carried out.
    pub fn manifest(&self) -> RemoteManifest {
        self.next.clone()
    }

    /// Nothing to upload or delete.
    pub fn is_noop(&self) -> bool {
        self.upload.is_empty() && self.delete.is_empty()
    }

    /// What the sync does (or, with `dry_run`, would do), and what stays home and why.
    pub fn render(&self, dry_run: bool) -> String {
        let mut out = String::new();
        let (up, del) = if dry_run {
            ("would upload", "would delete")
        } else {
            ("upload", "delete")
        };
        let total: u64 = self.upload.iter().map(|i| i.size).sum();
        let _ = writeln!(
            out,
            "Claude Code config{}: {} to upload ({}), {} to delete, {} unchanged, {} withheld",
            if dry_run { " (dry run)" } else { "" },
            self.upload.len(),
            bytes(total),
            self.delete.len(),
            self.unchanged.len(),
            self.withheld.len(),
        );
        for item in &self.upload {
            let note = match item.content {
                Content::File(_) => String::new(),
                Content::Generated(_) => ", generated".into(),
            };
            let _ = writeln!(out, "  {up:<12} {} ({}{note})", item.path, bytes(item.size));
        }
        for path in &self.delete {
            let _ = writeln!(out, "  {del:<12} {path}");
        }
        if !self.withheld.is_empty() {
            let _ = writeln!(out, "Withheld (never leaves this machine):");
            for w in &self.withheld {
                let _ = writeln!(out, "  {}: {}", w.path, w.reason);
            }
        }
        if self.is_noop() {
            let _ = writeln!(out, "Nothing to sync: the volume is up to date.");
        }
        out
    }
}

/// A local file holding exactly the bytes to upload for `item`: the file itself for
/// [`Content::File`], else a file written under `scratch` at the item's path.
pub fn materialize(item: &SyncItem, scratch: &Path) -> std::io::Result<PathBuf> {
    match &item.content {
        Content::File(path) => Ok(path.clone()),
        Content::Generated(data) => {
            let rel = Path::new(&item.path);
            if item.path.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_)))
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("unsafe sync path {:?}", item.path),
                ));
            }
            let target = scratch.join(rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&target, data)?;
            Ok(target)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OAUTH_TOKEN: &str = "sk-ant-oat01-FAKE-credentials-token-0001";
    const SETTINGS_KEY: &str = "sk-ant-api03-FAKE-settings-key-0002";
    const GH_TOKEN: &str = "ghp_FAKEgithubtoken0003";
    const AUTH_HEADER: &str = "Bearer FAKE-header-token-0004";
    const USER_ID: &str = "FAKE-user-id-0005";
    const ACCOUNT_UUID: &str = "FAKE-account-uuid-0006";
    const HELPER: &str = "/usr/local/bin/FAKE-key-helper-0007";
    const DB_PASSWORD: &str = "FAKE-db-password-0008";
    const SESSION_TEXT: &str = "FAKE-transcript-text-0009";
    const SECRETS: &[&str] = &[
        OAUTH_TOKEN,
        SETTINGS_KEY,
        GH_TOKEN,
        AUTH_HEADER,
        USER_ID,
        ACCOUNT_UUID,
        HELPER,
        DB_PASSWORD,
        SESSION_TEXT,
    ];

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A fake home with `~/.claude` and `~/.claude.json` full of things that must stay.
    fn fake_home() -> (tempfile::TempDir, ConfigSource) {
        let home = tempfile::tempdir().unwrap();
        let claude = home.path().join(".claude");
        write(
            &claude.join(".credentials.json"),
            &serde_json::json!({"claudeAiOauth": {"accessToken": OAUTH_TOKEN}}).to_string(),
        );
        write(
            &claude.join("settings.json"),
            &serde_json::json!({
                "model": "opus",
                "apiKeyHelper": HELPER,
                "env": {
                    "ANTHROPIC_API_KEY": SETTINGS_KEY,
                    "DB_PASSWORD": DB_PASSWORD,
                    "BASH_DEFAULT_TIMEOUT_MS": "60000",
                },
                "permissions": {"allow": ["Bash(ls:*)"]},
            })
            .to_string(),
        );
        write(
            &home.path().join(".claude.json"),
            &serde_json::json!({
                "userID": USER_ID,
                "oauthAccount": {"accountUuid": ACCOUNT_UUID, "emailAddress": "a@example.com"},
                "projects": {"/home/a/p": {"allowedTools": []}},
                "mcpServers": {
                    "github": {
                        "command": "github-mcp",
                        "args": ["stdio"],
                        "env": {"GITHUB_TOKEN": GH_TOKEN},
                    },
                    "remote": {
                        "type": "http",
                        "url": "https://mcp.example.com/",
                        "headers": {"Authorization": AUTH_HEADER},
                    },
                },
            })
            .to_string(),
        );
        write(&claude.join("commands/x.md"), "Do x.\n");
        write(&home.path().join("dotfiles/CLAUDE.md"), "Be brief.\n");
        std::os::unix::fs::symlink(
            home.path().join("dotfiles/CLAUDE.md"),
            claude.join("CLAUDE.md"),
        )
        .unwrap();
        write(
            &claude.join("projects/-home-a-p/0000.jsonl"),
            &format!("{{\"text\":\"{SESSION_TEXT}\"}}\n"),
        );
        write(&claude.join("history.jsonl"), "{\"display\":\"hi\"}\n");
        write(&claude.join("statsig/cache"), USER_ID);
        write(&claude.join("random.txt"), "?");
        write(
            &claude.join("plugins/cache/mkt/demo/1.0.0/.claude-plugin/plugin.json"),
            "{\"name\":\"demo\"}",
        );
        let source = ConfigSource::from_env(home.path(), None);
        (home, source)
    }

    fn uploaded_bytes(items: &[SyncItem], scratch: &Path) -> Vec<(String, Vec<u8>)> {
        items
            .iter()
            .map(|item| {
                let path = materialize(item, scratch).unwrap();
                let data = std::fs::read(&path).unwrap();
                assert_eq!(data.len() as u64, item.size, "{}", item.path);
                assert_eq!(hash_hex(&data), item.hash, "{}", item.path);
                (item.path.clone(), data)
            })
            .collect()
    }

    #[test]
    fn source_follows_claude_config_dir() {
        let s = ConfigSource::from_env(Path::new("/h"), None);
        assert_eq!(s.claude_dir, Path::new("/h/.claude"));
        assert_eq!(s.claude_json, Path::new("/h/.claude.json"));
        let s = ConfigSource::from_env(Path::new("/h"), Some(Path::new("/c")));
        assert_eq!(s.claude_dir, Path::new("/c"));
        assert_eq!(s.claude_json, Path::new("/c/.claude.json"));
    }

    #[test]
    fn no_secret_byte_is_ever_uploaded() {
        let (_home, src) = fake_home();
        let collected = collect(&src, &CollectOptions::default()).unwrap();
        let paths: Vec<&str> = collected.items.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "CLAUDE.md",
                "commands/x.md",
                "mcp-servers.json",
                "plugins/cache/mkt/demo/1.0.0/.claude-plugin/plugin.json",
                "settings.json",
            ]
        );
        let scratch = tempfile::tempdir().unwrap();
        for (path, data) in uploaded_bytes(&collected.items, scratch.path()) {
            let text = String::from_utf8_lossy(&data);
            for secret in SECRETS {
                assert!(!text.contains(secret), "{path} contains {secret}");
            }
        }
        // The rewritten files keep what is not secret.
        let generated = |name: &str| -> serde_json::Value {
            let item = collected.items.iter().find(|i| i.path == name).unwrap();
            let Content::Generated(data) = &item.content else {
                panic!("{name} is not generated")
            };
            serde_json::from_slice(data).unwrap()
        };
        let settings = generated("settings.json");
        assert_eq!(settings["model"], "opus");
        assert_eq!(settings["env"]["BASH_DEFAULT_TIMEOUT_MS"], "60000");
        assert_eq!(settings["permissions"]["allow"][0], "Bash(ls:*)");
        assert!(settings.get("apiKeyHelper").is_none());
        let mcp = generated("mcp-servers.json");
        assert_eq!(
            mcp,
            serde_json::json!({"mcpServers": {
                "github": {"command": "github-mcp", "args": ["stdio"]},
                "remote": {"type": "http", "url": "https://mcp.example.com/"},
            }})
        );
        // The symlinked CLAUDE.md is uploaded from its target.
        let claude_md = collected
            .items
            .iter()
            .find(|i| i.path == "CLAUDE.md")
            .unwrap();
        assert_eq!(
            std::fs::read(materialize(claude_md, scratch.path()).unwrap()).unwrap(),
            b"Be brief.\n"
        );
    }

    #[test]
    fn secrets_can_be_opted_in() {
        let (_home, src) = fake_home();
        let opts = CollectOptions {
            include_history: true,
            include_mcp_secrets: true,
        };
        let collected = collect(&src, &opts).unwrap();
        assert!(collected.items.iter().any(|i| i.path == "history.jsonl"));
        let mcp = collected
            .items
            .iter()
            .find(|i| i.path == MCP_SERVERS_FILE)
            .unwrap();
        let Content::Generated(data) = &mcp.content else {
            panic!()
        };
        assert!(String::from_utf8_lossy(data).contains(GH_TOKEN));
        // Credentials and the account never travel, whatever the options.
        let scratch = tempfile::tempdir().unwrap();
        for (path, data) in uploaded_bytes(&collected.items, scratch.path()) {
            let text = String::from_utf8_lossy(&data);
            for secret in [OAUTH_TOKEN, SETTINGS_KEY, USER_ID, ACCOUNT_UUID, HELPER] {
                assert!(!text.contains(secret), "{path} contains {secret}");
            }
        }
    }

    #[test]
    fn withheld_things_are_listed_with_reasons() {
        let (_home, src) = fake_home();
        let collected = collect(&src, &CollectOptions::default()).unwrap();
        let reason = |path: &str| {
            collected
                .withheld
                .iter()
                .find(|w| w.path == path)
                .map(|w| w.reason.clone())
                .unwrap_or_else(|| panic!("{path} not withheld: {:?}", collected.withheld))
        };
        assert_eq!(reason(".credentials.json"), "credentials");
        assert!(reason(".claude.json").contains("account and machine ids"));
        assert!(reason("projects").contains("session data"));
        assert!(reason("statsig").contains("account and machine ids"));
        assert!(reason("history.jsonl").contains("--include-history"));
        assert_eq!(reason("random.txt"), "not configuration");
        assert!(reason("settings.json: env.ANTHROPIC_API_KEY").contains("credential"));
        assert!(reason("settings.json: env.DB_PASSWORD").contains("PASSWORD"));
        assert!(reason("settings.json: apiKeyHelper").contains("credential helper"));
        assert!(reason("mcp-servers.json: mcpServers.github.env").contains("GITHUB_TOKEN"));
        assert!(reason("mcp-servers.json: mcpServers.remote.headers").contains("Authorization"));
        // No reason or path mentions a secret value either.
        for w in &collected.withheld {
            for secret in SECRETS {
                assert!(!w.reason.contains(secret) && !w.path.contains(secret));
            }
        }
        let mut sorted = collected.withheld.clone();
        sorted.sort_by(|a, b| a.path.cmp(&b.path).then(a.reason.cmp(&b.reason)));
        assert_eq!(sorted, collected.withheld);

        let rendered = plan(collected, None).render(true);
        assert!(rendered.contains("(dry run)"), "{rendered}");
        assert!(rendered.contains("would upload"), "{rendered}");
        assert!(
            rendered.contains(".credentials.json: credentials"),
            "{rendered}"
        );
        assert!(
            rendered.contains("settings.json: env.ANTHROPIC_API_KEY: credential"),
            "{rendered}"
        );
        assert!(rendered.contains("projects: session data"), "{rendered}");
        for secret in SECRETS {
            assert!(!rendered.contains(secret), "{rendered}");
        }
    }

    #[test]
    fn second_plan_uploads_only_changes_and_deletes_what_went_away() {
        let (home, src) = fake_home();
        let opts = CollectOptions::default();
        let first = plan(collect(&src, &opts).unwrap(), None);
        assert_eq!(first.upload.len(), 5);
        assert!(first.delete.is_empty() && first.unchanged.is_empty());
        let remote = first.manifest();
        assert_eq!(remote.version, MANIFEST_VERSION);
        assert_eq!(remote.files.len(), 5);
        // The manifest survives its JSON form.
        let remote: RemoteManifest =
            serde_json::from_str(&serde_json::to_string(&remote).unwrap()).unwrap();

        let again = plan(collect(&src, &opts).unwrap(), Some(&remote));
        assert!(again.is_noop(), "{again:?}");
        assert_eq!(again.unchanged.len(), 5);
        assert!(again.render(false).contains("Nothing to sync"));

        let claude = home.path().join(".claude");
        write(&claude.join("commands/x.md"), "Do x, carefully.\n");
        write(&claude.join("agents/rev.md"), "Review.\n");
        std::fs::remove_file(claude.join("CLAUDE.md")).unwrap();
        let third = plan(collect(&src, &opts).unwrap(), Some(&remote));
        let uploads: Vec<&str> = third.upload.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(uploads, ["agents/rev.md", "commands/x.md"]);
        assert_eq!(third.delete, ["CLAUDE.md"]);
        assert_eq!(third.unchanged.len(), 3);
        assert!(!third.is_noop());
        let next = third.manifest();
        assert!(!next.files.contains_key("CLAUDE.md"));
        assert!(next.files.contains_key("agents/rev.md"));
        let text = third.render(false);
        assert!(text.contains("delete       CLAUDE.md"), "{text}");
        assert!(text.contains("upload       agents/rev.md"), "{text}");
    }

    #[test]
    fn trees_follow_symlinks_refuse_loops_and_skip_big_files() {
        let home = tempfile::tempdir().unwrap();
        let claude = home.path().join(".claude");
        write(&home.path().join("shared/skills/a/SKILL.md"), "A\n");
        std::fs::create_dir_all(&claude).unwrap();
        std::os::unix::fs::symlink(home.path().join("shared/skills"), claude.join("skills"))
            .unwrap();
        std::os::unix::fs::symlink(claude.join("skills"), claude.join("skills/a/loop")).unwrap();
        std::os::unix::fs::symlink(home.path().join("missing"), claude.join("skills/dangling"))
            .unwrap();
        let big = std::fs::File::create(claude.join("skills/a/big.bin")).unwrap();
        big.set_len(MAX_FILE_BYTES + 1).unwrap();
        write(&claude.join("plugins/m/.git/config"), "[core]\n");
        write(&claude.join("plugins/m/p/.claude-plugin/plugin.json"), "{}");

        let src = ConfigSource::from_env(home.path(), None);
        let collected = collect(&src, &CollectOptions::default()).unwrap();
        let paths: Vec<&str> = collected.items.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "plugins/m/p/.claude-plugin/plugin.json",
                "skills/a/SKILL.md"
            ]
        );
        let withheld: BTreeMap<&str, &str> = collected
            .withheld
            .iter()
            .map(|w| (w.path.as_str(), w.reason.as_str()))
            .collect();
        assert_eq!(withheld.get("skills/a/loop"), Some(&"symlink loop"));
        assert_eq!(withheld.get("skills/dangling"), Some(&"broken symlink"));
        assert!(withheld["skills/a/big.bin"].starts_with("too large"));
        assert_eq!(
            withheld.get("plugins/m/.git"),
            Some(&"version control data")
        );
    }

    #[test]
    fn missing_config_is_empty_and_a_file_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let src = ConfigSource::from_env(home.path(), None);
        let collected = collect(&src, &CollectOptions::default()).unwrap();
        assert_eq!(collected, Collected::default());
        assert!(plan(collected, None).is_noop());

        write(&home.path().join(".claude"), "not a dir");
        let err = collect(&src, &CollectOptions::default()).unwrap_err();
        assert_eq!(err.code, error_codes::INVALID_INPUT);
    }

    #[test]
    fn unparseable_settings_are_withheld_not_uploaded() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("cfg");
        write(
            &dir.join("settings.json"),
            "{\"env\": {\"ANTHROPIC_API_KEY\": ",
        );
        write(&dir.join(".claude.json"), "{\"mcpServers\": {}}");
        let src = ConfigSource::from_env(home.path(), Some(&dir));
        let collected = collect(&src, &CollectOptions::default()).unwrap();
        let paths: Vec<&str> = collected.items.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, [MCP_SERVERS_FILE]);
        assert!(
            collected
                .withheld
                .iter()
                .any(|w| w.path == "settings.json" && w.reason.contains("not valid JSON"))
        );
        // Inside $CLAUDE_CONFIG_DIR, .claude.json is listed once.
        assert_eq!(
            collected
                .withheld
                .iter()
                .filter(|w| w.path == ".claude.json")
                .count(),
            1
        );
    }

    #[test]
    fn materialize_refuses_paths_that_escape() {
        let scratch = tempfile::tempdir().unwrap();
        let item = SyncItem {
            path: "../evil".into(),
            content: Content::Generated(b"x".to_vec()),
            size: 1,
            hash: hash_hex(b"x"),
        };
        assert!(materialize(&item, scratch.path()).is_err());
    }
}
