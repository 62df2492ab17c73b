//! Config sync: which parts of the user's Claude Code configuration may leave this
//! machine (for the Modal volume's `config/claude/`, and later local sessions), and
//! which never do.
//!
//! IO only at the edges: [`read`] takes a [`Snapshot`] of the config dir (`~/.claude`,
//! or `$CLAUDE_CONFIG_DIR`) and `.claude.json`, never following a symlink and reading
//! only the files the planner could sync; [`plan_snapshot`] is pure and turns it into a
//! [`SyncPlan`]: the exact bytes of every file to sync, and every [`Withheld`] thing
//! with its reason (file, JSON path, reason; never the secret value). [`plan`] and
//! [`plan_source`] do both. [`changes`] compares a plan with the volume's
//! [`RemoteManifest`] (at [`MANIFEST_PATH`]).
//!
//! Promises (documented in `docs/formats/config.md`, "Config sync", and
//! `docs/security/config-secrets.md`):
//! - An allowlist: `settings.json`, `settings.local.json`, `CLAUDE.md`, the directories
//!   `agents/`, `commands/`, `output-styles/`, `plugins/`, `rules/`, `skills/` (regular
//!   files, recursively), and from `.claude.json` only `mcpServers` (as the generated
//!   `mcp-servers.json`). Everything else is withheld and listed.
//! - Symlinks are never followed (each is listed; one pointing outside the config dir
//!   says so). Files are opened with `O_NOFOLLOW`.
//! - Credential files (`.env*`, `.git-credentials`, `.netrc`, `credentials.json`, keys,
//!   `.git/`, ...) are withheld wherever they are.
//! - Every JSON file is parsed and written back without the values that look like
//!   credentials (by key name, by `env` variable name, by value pattern); a JSON file
//!   that does not parse is withheld whole. Any other file is withheld whole when its
//!   text contains a token pattern.
//! - Bounded: [`MAX_FILE_BYTES`] a file, [`MAX_TOTAL_BYTES`] and [`MAX_ENTRIES`] in all,
//!   [`MAX_DEPTH`] levels; JSON nesting is bounded by serde_json's recursion limit.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::CodedError;
use crate::error_codes;
use crate::render::bytes;

/// Where synced files live on the volume (planned paths are relative to it).
pub const VOLUME_DIR: &str = "config/claude";
/// The volume's record of what was uploaded, by path and hash.
pub const MANIFEST_PATH: &str = "config/manifest.json";
/// The [`RemoteManifest::version`] this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// Files larger than this are not synced.
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;
/// At most this many bytes are read in all.
pub const MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;
/// At most this many entries (files, directories, links) are looked at.
pub const MAX_ENTRIES: usize = 50_000;
/// Directories deeper than this below a synced directory are not looked at.
pub const MAX_DEPTH: usize = 32;
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
    ("file-history", "session data"),
    ("plans", "session data"),
    ("ide", "this machine's IDE connections"),
];

/// File names withheld wherever they are, because they hold credentials.
const CREDENTIAL_FILES: &[&str] = &[
    ".credentials.json",
    "credentials.json",
    "credentials",
    ".git-credentials",
    ".netrc",
    "_netrc",
    ".npmrc",
    ".pypirc",
    ".pgpass",
    ".envrc",
    ".htpasswd",
    "secrets.json",
    "token.json",
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
];

/// File name endings withheld wherever they are (keys and keystores).
const CREDENTIAL_SUFFIXES: &[&str] = &[".pem", ".key", ".p12", ".pfx", ".jks", ".keystore"];

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

/// What a plan may include beyond the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectOptions {
    /// Sync `history.jsonl` (the prompt history), unless it contains a token.
    pub include_history: bool,
    /// Keep the entries of MCP servers' `env` and `headers` maps that do not look like
    /// credentials (by default those maps are dropped whole).
    pub include_mcp_secrets: bool,
}

/// One file to sync: its path (relative to [`VOLUME_DIR`], `/`-separated) and the exact
/// bytes to write there.
#[derive(Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub rel_path: String,
    pub bytes: Vec<u8>,
}

impl PlannedFile {
    /// blake3 (hex) of the bytes.
    pub fn hash(&self) -> String {
        hash_hex(&self.bytes)
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

impl std::fmt::Debug for PlannedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PlannedFile({:?}, {} bytes)",
            self.rel_path,
            self.bytes.len()
        )
    }
}

/// Something that stays on this machine, and why. Never holds a secret value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Withheld {
    /// The local file, relative to the config dir (`.claude.json` for that file).
    pub path: String,
    /// Inside a JSON file: where the removed value was (`env.GITHUB_PAT`,
    /// `mcpServers.github.args[1]`); `None` when the whole path is withheld.
    pub json_path: Option<String>,
    pub reason: String,
}

/// What may be synced: every file with its exact bytes, and what is withheld.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// Sorted by path, no duplicates.
    pub files: Vec<PlannedFile>,
    /// Sorted.
    pub withheld: Vec<Withheld>,
}

/// One entry [`read`] found. `File` holds bytes only for files the planner may sync.
#[derive(Clone, PartialEq, Eq)]
pub enum Node {
    File(Vec<u8>),
    /// A regular file whose bytes were not read (the planner never syncs it).
    Unread,
    Dir,
    /// A symbolic link (never followed); `outside`: it resolves outside the config dir
    /// (or nowhere).
    Symlink {
        outside: bool,
    },
    /// A FIFO, socket or device.
    Special,
    TooLarge(u64),
    Unreadable(String),
    /// The name is not UTF-8.
    NotUtf8,
    /// Not looked at: [`MAX_ENTRIES`] or [`MAX_TOTAL_BYTES`] was reached.
    OverLimit,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::File(data) => write!(f, "File({} bytes)", data.len()),
            Node::Unread => f.write_str("Unread"),
            Node::Dir => f.write_str("Dir"),
            Node::Symlink { outside } => write!(f, "Symlink {{ outside: {outside} }}"),
            Node::Special => f.write_str("Special"),
            Node::TooLarge(n) => write!(f, "TooLarge({n})"),
            Node::Unreadable(e) => write!(f, "Unreadable({e:?})"),
            Node::NotUtf8 => f.write_str("NotUtf8"),
            Node::OverLimit => f.write_str("OverLimit"),
        }
    }
}

/// What [`read`] found on disk: the only input of [`plan_snapshot`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Entries under the config dir by `/`-separated relative path.
    pub entries: BTreeMap<String, Node>,
    /// `.claude.json` (`None`: there is none).
    pub claude_json: Option<Node>,
    /// `.claude.json` is outside the config dir (so `entries` does not list it).
    pub claude_json_outside: bool,
}

/// How the planner treats a file, by its relative path alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Parsed and written back without secrets.
    Json,
    /// Synced as it is unless its text contains a token.
    Text,
    Withhold(&'static str),
}

fn top_reason(name: &str) -> &'static str {
    NEVER_SYNCED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| *r)
        .unwrap_or("not configuration")
}

fn is_credential_file(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    CREDENTIAL_FILES.contains(&lower.as_str())
        || lower == ".env"
        || lower.starts_with(".env.")
        || lower.ends_with(".env")
        || CREDENTIAL_SUFFIXES.iter().any(|s| lower.ends_with(s))
}

/// Whether a file of this name holds credentials wherever it is (`.env*`,
/// `.git-credentials`, `.netrc`, `credentials.json`, keys, ...): what the planner
/// withholds by name, for other callers that must keep the same files back.
pub fn is_credential_file_name(name: &str) -> bool {
    is_credential_file(name)
}

/// Why a text file must not leave this machine (it contains a token pattern or a
/// secret-named assignment), or `None`. Never quotes the text. The planner's own
/// check for files that are not JSON.
pub fn text_secret_reason(text: &str) -> Option<String> {
    string_reason(text, Mode::Plain)
}

fn classify(rel: &str, opts: &CollectOptions) -> Kind {
    let parts: Vec<&str> = rel.split('/').collect();
    if parts.len() == 1 {
        let name = parts[0];
        return match name {
            "settings.json" | "settings.local.json" => Kind::Json,
            "CLAUDE.md" => Kind::Text,
            "history.jsonl" if opts.include_history => Kind::Text,
            "history.jsonl" => Kind::Withhold("prompt history (`--include-history` syncs it)"),
            _ if is_credential_file(name) => Kind::Withhold("credentials"),
            _ if SYNCED_DIRS.contains(&name) => Kind::Withhold("not a directory"),
            _ => Kind::Withhold(top_reason(name)),
        };
    }
    if !SYNCED_DIRS.contains(&parts[0]) {
        return Kind::Withhold(top_reason(parts[0]));
    }
    for part in &parts[..parts.len() - 1] {
        if *part == ".git" {
            return Kind::Withhold("version control data");
        }
    }
    let name = parts[parts.len() - 1];
    if is_credential_file(name) {
        return Kind::Withhold("a credentials file");
    }
    if name.to_ascii_lowercase().ends_with(".json") {
        Kind::Json
    } else {
        Kind::Text
    }
}

// ---------------------------------------------------------------------------
// The reading edge.

/// Reads the user's config for planning: no symlink is followed, only files the
/// planner may sync are read, and everything is bounded (see the module docs).
pub fn read(src: &ConfigSource, opts: &CollectOptions) -> Result<Snapshot, CodedError> {
    let mut snap = Snapshot::default();
    let mut budget = Budget::default();
    match std::fs::metadata(&src.claude_dir) {
        Ok(meta) if meta.is_dir() => {
            // The config dir itself may be a symlink (a dotfiles checkout): its
            // resolved location is the root nothing is read outside of.
            let root = std::fs::canonicalize(&src.claude_dir).map_err(|e| {
                CodedError::new(
                    error_codes::USER_CONFIG_UNAVAILABLE,
                    format!("cannot read {}: {e}", src.claude_dir.display()),
                )
            })?;
            read_top(&root, opts, &mut snap, &mut budget)?;
        }
        Ok(_) => {
            return Err(CodedError::new(
                error_codes::USER_CONFIG_UNAVAILABLE,
                format!(
                    "the Claude Code config dir {} is not a directory",
                    src.claude_dir.display()
                ),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(CodedError::new(
                error_codes::USER_CONFIG_UNAVAILABLE,
                format!("cannot read {}: {e}", src.claude_dir.display()),
            ));
        }
    }
    snap.claude_json_outside = src.claude_json.parent() != Some(src.claude_dir.as_path());
    snap.claude_json = match std::fs::symlink_metadata(&src.claude_json) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Node::Unreadable(e.to_string())),
        Ok(meta) if meta.file_type().is_symlink() => Some(Node::Symlink {
            outside: link_outside(
                src.claude_json.parent().unwrap_or(Path::new("/")),
                &src.claude_json,
            ),
        }),
        Ok(_) => Some(read_file(&src.claude_json, &mut budget)),
    };
    Ok(snap)
}

#[derive(Default)]
struct Budget {
    entries: usize,
    bytes: u64,
}

impl Budget {
    fn entry(&mut self) -> bool {
        self.entries += 1;
        self.entries <= MAX_ENTRIES
    }
}

fn read_top(
    root: &Path,
    opts: &CollectOptions,
    snap: &mut Snapshot,
    budget: &mut Budget,
) -> Result<(), CodedError> {
    let unreadable = |e: std::io::Error| {
        CodedError::new(
            error_codes::INFRASTRUCTURE_ERROR,
            format!("cannot read {}: {e}", root.display()),
        )
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root).map_err(unreadable)? {
        names.push(entry.map_err(unreadable)?.file_name());
    }
    names.sort();
    for os_name in names {
        let path = root.join(&os_name);
        let Some(name) = os_name.to_str() else {
            snap.entries
                .insert(os_name.to_string_lossy().into_owned(), Node::NotUtf8);
            continue;
        };
        if !budget.entry() {
            snap.entries.insert(name.to_string(), Node::OverLimit);
            return Ok(());
        }
        let node = match std::fs::symlink_metadata(&path) {
            Err(e) => Node::Unreadable(e.to_string()),
            Ok(meta) if meta.file_type().is_symlink() => Node::Symlink {
                outside: link_outside(root, &path),
            },
            Ok(meta) if meta.is_dir() => {
                if SYNCED_DIRS.contains(&name) {
                    snap.entries.insert(name.to_string(), Node::Dir);
                    if !read_tree(root, name, opts, snap, budget) {
                        return Ok(());
                    }
                    continue;
                }
                Node::Dir
            }
            Ok(meta) if meta.is_file() => match classify(name, opts) {
                Kind::Withhold(_) => Node::Unread,
                Kind::Json | Kind::Text => read_file(&path, budget),
            },
            Ok(_) => Node::Special,
        };
        snap.entries.insert(name.to_string(), node);
    }
    Ok(())
}

/// Walks `root/top` without following links. False when a limit stopped it.
fn read_tree(
    root: &Path,
    top: &str,
    opts: &CollectOptions,
    snap: &mut Snapshot,
    budget: &mut Budget,
) -> bool {
    let base = root.join(top);
    let mut walker = walkdir::WalkDir::new(&base)
        .min_depth(1)
        .max_depth(MAX_DEPTH)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    while let Some(next) = walker.next() {
        let entry = match next {
            Ok(entry) => entry,
            Err(e) => {
                let rel = e
                    .path()
                    .map(|p| relative(top, &base, p))
                    .unwrap_or_else(|| top.to_string());
                snap.entries.insert(rel, Node::Unreadable(e.to_string()));
                continue;
            }
        };
        let rel = relative(top, &base, entry.path());
        let is_dir = entry.file_type().is_dir();
        if !budget.entry() {
            snap.entries.insert(rel, Node::OverLimit);
            return false;
        }
        if entry.path().to_str().is_none() {
            snap.entries.insert(rel, Node::NotUtf8);
            if is_dir {
                walker.skip_current_dir();
            }
            continue;
        }
        let node = if entry.file_type().is_symlink() {
            Node::Symlink {
                outside: link_outside(root, entry.path()),
            }
        } else if is_dir {
            if entry.file_name() == ".git" {
                walker.skip_current_dir();
            }
            Node::Dir
        } else if entry.file_type().is_file() {
            match classify(&rel, opts) {
                Kind::Withhold(_) => Node::Unread,
                Kind::Json | Kind::Text => read_file(entry.path(), budget),
            }
        } else {
            Node::Special
        };
        if matches!(node, Node::OverLimit) {
            snap.entries.insert(rel, node);
            return false;
        }
        snap.entries.insert(rel, node);
    }
    true
}

/// Whether a symlink resolves outside `root` (a dangling one counts as outside).
fn link_outside(root: &Path, link: &Path) -> bool {
    let Ok(target) = std::fs::read_link(link) else {
        return true;
    };
    let target = match link.parent() {
        Some(parent) if target.is_relative() => parent.join(target),
        _ => target,
    };
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    match std::fs::canonicalize(&target) {
        Ok(real) => !real.starts_with(&root),
        Err(_) => true,
    }
}

/// Reads one regular file without following a symlink and within the limits.
fn read_file(path: &Path, budget: &mut Budget) -> Node {
    use std::os::unix::fs::OpenOptionsExt as _;
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
            return Node::Symlink { outside: true };
        }
        Err(e) => return Node::Unreadable(e.to_string()),
    };
    let meta = match file.metadata() {
        Ok(meta) => meta,
        Err(e) => return Node::Unreadable(e.to_string()),
    };
    if !meta.is_file() {
        return Node::Special;
    }
    if meta.len() > MAX_FILE_BYTES {
        return Node::TooLarge(meta.len());
    }
    if budget.bytes.saturating_add(meta.len()) > MAX_TOTAL_BYTES {
        return Node::OverLimit;
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    if let Err(e) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut data) {
        return Node::Unreadable(e.to_string());
    }
    if data.len() as u64 > MAX_FILE_BYTES {
        return Node::TooLarge(data.len() as u64);
    }
    budget.bytes += data.len() as u64;
    Node::File(data)
}

/// `top/<path below base>`, `/`-separated.
fn relative(top: &str, base: &Path, path: &Path) -> String {
    let mut out = top.to_string();
    if let Ok(rest) = path.strip_prefix(base) {
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

// ---------------------------------------------------------------------------
// The secret scanner (pure).

/// A token pattern: the regex, what it is, and an optional check of capture group 1.
struct Pattern {
    re: Regex,
    what: &'static str,
    check: Option<fn(&str) -> bool>,
}

fn has_digit(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit())
}

fn pattern(re: &str, what: &'static str, check: Option<fn(&str) -> bool>) -> Pattern {
    Pattern {
        re: Regex::new(re).expect("a valid built-in pattern"),
        what,
        check,
    }
}

/// Shapes of credentials, wherever they appear in a string.
static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    vec![
        pattern(
            r"sk-ant-[A-Za-z0-9_\-]{8,}",
            "an Anthropic key (sk-ant-)",
            None,
        ),
        pattern(
            r"(?:^|[^A-Za-z0-9])sk-([A-Za-z0-9_\-]{16,})",
            "an API key (sk-)",
            Some(has_digit),
        ),
        pattern(
            r"(?:ghp|gho|ghs|ghu|ghr)_[A-Za-z0-9]{10,}",
            "a GitHub token",
            None,
        ),
        pattern(r"github_pat_[A-Za-z0-9_]{10,}", "a GitHub token", None),
        pattern(r"glpat-[A-Za-z0-9_\-]{16,}", "a GitLab token", None),
        pattern(r"xox[abposr]-[A-Za-z0-9\-]{8,}", "a Slack token", None),
        pattern(r"(?:AKIA|ASIA)[0-9A-Z]{16}", "an AWS access key id", None),
        pattern(r"AIza[0-9A-Za-z_\-]{30,}", "a Google API key", None),
        pattern(r"npm_[A-Za-z0-9]{36}", "an npm token", None),
        pattern(
            r"eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.",
            "a JSON web token",
            None,
        ),
        pattern(
            r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY",
            "a private key (PEM)",
            None,
        ),
        pattern(
            r"(?i)[a-z][a-z0-9+.\-]*://[^/\s:@?#]*:([^/\s@?#]+)@",
            "a URL with a password (user:password@)",
            Some(|p: &str| !p.starts_with('$')),
        ),
        pattern(
            r"(?i)[a-z][a-z0-9+.\-]*://([^/\s:@?#]{16,})@",
            "a URL with a token as its user",
            Some(|u: &str| !u.starts_with('$')),
        ),
        pattern(
            r"(?i)[?&;](?:api[_\-]?key|access[_\-]?token|auth[_\-]?token|token|key|secret|client[_\-]?secret|password|passwd|auth|sig|signature)=([^&\s#'\x22]+)",
            "a URL carrying a credential in its query (api_key=, token=, key=)",
            Some(|v: &str| !v.starts_with('$') && !v.starts_with('{')),
        ),
        pattern(
            r"(?i)\b(?:bearer|basic)\s+([A-Za-z0-9._~+/=\-]{8,})",
            "an authorization header value (Bearer/Basic)",
            Some(has_digit),
        ),
    ]
});

/// `NAME = value` / `"name": "value"` with a secret-looking name, in text.
static ASSIGNMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)[a-z0-9_\-]*(?:api[_\-]?key|secret|token|passwd|password|private[_\-]?key|access[_\-]?key)[a-z0-9_\-]*["']?\s*[:=]\s*(?:"([^"\s$]{6,})"|'([^'\s$]{6,})'|([A-Za-z0-9_\-+/=]{12,}))"#,
    )
    .expect("a valid built-in pattern")
});

/// Where a string was found, which decides the checks beyond the token patterns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Patterns and secret-named assignments.
    Plain,
    /// Also: the string (or what follows its `=`) is a long random-looking token.
    Arg,
    /// Also: any word of it is a long random-looking token.
    Command,
}

/// Why a string must not leave this machine, if it must not. Never quotes the string.
fn string_reason(s: &str, mode: Mode) -> Option<String> {
    for p in PATTERNS.iter() {
        for caps in p.re.captures_iter(s) {
            let ok = match (p.check, caps.get(1)) {
                (Some(check), Some(m)) => check(m.as_str()),
                _ => true,
            };
            if ok {
                return Some(format!("looks like {}", p.what));
            }
        }
    }
    for caps in ASSIGNMENT.captures_iter(s) {
        let value = (1..=3).find_map(|i| caps.get(i)).map(|m| m.as_str());
        if let Some(value) = value
            && !value.bytes().all(|b| b.is_ascii_digit())
            && (has_digit(value) || caps.get(3).is_none() && value.len() >= 16 || value.len() >= 24)
        {
            return Some("assigns a value to a secret-named variable".into());
        }
    }
    match mode {
        Mode::Plain => None,
        Mode::Arg => {
            let value = s.rsplit_once('=').map(|(_, v)| v).unwrap_or(s);
            random_token(value, 20)
                .then(|| "a long random-looking string (probably a token)".to_string())
        }
        Mode::Command => s
            .split(|c: char| c.is_whitespace() || "'\"=:,;()".contains(c))
            .any(|word| random_token(word, 24))
            .then(|| "contains a long random-looking string (probably a token)".to_string()),
    }
}

/// A long string of token characters with letters and digits and high entropy, or
/// long hex.
fn random_token(s: &str, min_len: usize) -> bool {
    if s.len() < min_len || s.starts_with(['-', '/', '~', '.']) {
        return false;
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-+/=".contains(&b))
    {
        return false;
    }
    if s.len() >= 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return true;
    }
    let letters = s.bytes().any(|b| b.is_ascii_alphabetic());
    if !letters || !has_digit(s) {
        return false;
    }
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum();
    entropy >= 3.0
}

/// `apiKey`, `client_secret`, `X-Auth-Token` -> `apikey`, `clientsecret`, `xauthtoken`.
fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '_' | '-' | '.' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Why a JSON key's value is withheld whatever it is, if it is.
fn key_reason(key: &str) -> Option<String> {
    const EXACT: &[&str] = &[
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "passphrase",
        "authorization",
        "auth",
        "pat",
        "credentials",
        "credential",
        "privatekey",
        "cookie",
        "secretkey",
        "secretaccesskey",
        "headershelper",
        "otelheadershelper",
        "apikeyhelper",
        "awsauthrefresh",
        "awscredentialexport",
    ];
    const SUFFIXES: &[&str] = &[
        "token",
        "secret",
        "password",
        "passwd",
        "apikey",
        "privatekey",
        "credentials",
        "authorization",
    ];
    let n = normalize(key);
    if (n.ends_with("helper") || n.starts_with("aws")) && EXACT.contains(&n.as_str()) {
        return Some("a credential helper (its command produces credentials)".into());
    }
    (EXACT.contains(&n.as_str()) || SUFFIXES.iter().any(|s| n.ends_with(s)))
        .then(|| "its key name says it holds a credential".to_string())
}

/// Why an environment variable is withheld by its name, if it is.
fn env_name_reason(name: &str) -> Option<String> {
    const SUFFIXES: &[&str] = &[
        "_KEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "_PASS",
        "_PAT",
        "_PWD",
        "APIKEY",
        "_CREDENTIALS",
        "_CREDENTIAL",
        "_AUTH",
        "_COOKIE",
        "_DSN",
        "HEADERS",
        "_CONNECTION_STRING",
    ];
    const PARTS: &[&str] = &[
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "API_KEY",
        "APIKEY",
        "PRIVATE_KEY",
        "ACCESS_KEY",
        "CREDENTIAL",
        "AUTH_TOKEN",
    ];
    let upper = name.to_ascii_uppercase();
    if upper == "DATABASE_URL" {
        return Some("a database URL (holds its password)".into());
    }
    if let Some(s) = SUFFIXES.iter().find(|s| upper.ends_with(*s)) {
        return Some(format!("its name ends in {s}"));
    }
    PARTS
        .iter()
        .find(|p| upper.contains(*p))
        .map(|p| format!("its name contains {p}"))
}

/// Why an HTTP header is withheld by its name, if it is.
fn header_name_reason(name: &str) -> Option<String> {
    const PARTS: &[&str] = &[
        "auth",
        "token",
        "key",
        "secret",
        "cookie",
        "session",
        "signature",
        "password",
    ];
    let n = normalize(name);
    PARTS
        .iter()
        .any(|p| n.contains(p))
        .then(|| "an authentication header".to_string())
}

/// A flag whose next argument is a secret: `--token`, `--api-key`, `-password`.
fn is_secret_flag(arg: &str) -> bool {
    let Some(name) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
        return false;
    };
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && key_reason(name).is_some()
}

/// What surrounds a JSON value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ctx {
    Plain,
    /// The values of an `env` map (names are environment variables).
    Env,
    /// The values of a `headers` map.
    Headers,
    /// The elements of an `args` array.
    Args,
}

/// Removes what looks like a credential from one JSON file, recording each removal.
struct Scrubber<'a> {
    file: &'a str,
    withheld: &'a mut Vec<Withheld>,
}

/// `a.b`, `a["x.y"]`, `a[3]`; a key that looks like a secret itself is not shown.
fn child_path(parent: &str, key: &str) -> String {
    let shown = if string_reason(key, Mode::Plain).is_some() {
        "[<key withheld>]".to_string()
    } else if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        if parent.is_empty() {
            key.to_string()
        } else {
            format!(".{key}")
        }
    } else {
        format!("[{}]", Value::String(key.to_string()))
    };
    if parent.is_empty() && shown.starts_with('[') {
        shown
    } else {
        format!("{parent}{shown}")
    }
}

impl Scrubber<'_> {
    fn withhold(&mut self, json_path: String, reason: String) {
        self.withheld.push(Withheld {
            path: self.file.to_string(),
            json_path: Some(json_path),
            reason,
        });
    }

    /// Scrubs `value` in place; `Some(reason)` when the caller must remove it whole.
    fn scrub(&mut self, value: &mut Value, path: &str, ctx: Ctx) -> Option<String> {
        match value {
            Value::String(s) => {
                let mode = match ctx {
                    Ctx::Args | Ctx::Env | Ctx::Headers => Mode::Arg,
                    Ctx::Plain => Mode::Plain,
                };
                string_reason(s, mode)
            }
            Value::Array(items) => {
                let mut drop = vec![false; items.len()];
                let mut after_flag = false;
                for (i, item) in items.iter_mut().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    if ctx == Ctx::Args && after_flag {
                        drop[i] = true;
                        self.withhold(item_path, "the value of a credential flag".into());
                        after_flag = false;
                        continue;
                    }
                    after_flag = ctx == Ctx::Args && item.as_str().is_some_and(is_secret_flag);
                    let inner = if ctx == Ctx::Args {
                        Ctx::Args
                    } else {
                        Ctx::Plain
                    };
                    let flagged = match item.as_str() {
                        Some(arg) if ctx == Ctx::Args => arg
                            .split_once('=')
                            .is_some_and(|(flag, _)| is_secret_flag(flag))
                            .then(|| "a credential flag with its value".to_string()),
                        _ => None,
                    };
                    if let Some(reason) = flagged.or_else(|| self.scrub(item, &item_path, inner)) {
                        drop[i] = true;
                        self.withhold(item_path, reason);
                    }
                }
                let mut i = 0;
                items.retain(|_| {
                    i += 1;
                    !drop[i - 1]
                });
                None
            }
            Value::Object(map) => {
                // A hook, a status line or an MCP server whose command carries a token
                // goes whole.
                if let Some(Value::String(command)) = map.get("command")
                    && let Some(reason) = string_reason(command, Mode::Command)
                {
                    return Some(format!("its command {}", lowercase_first(&reason)));
                }
                let keys: Vec<String> = map.keys().cloned().collect();
                for key in keys {
                    let key_path = child_path(path, &key);
                    let Some(child) = map.get_mut(&key) else {
                        continue;
                    };
                    let by_name = if string_reason(&key, Mode::Plain).is_some() {
                        Some("its key looks like a credential".to_string())
                    } else if matches!(child, Value::Bool(_) | Value::Null) {
                        None
                    } else {
                        match ctx {
                            Ctx::Env => env_name_reason(&key),
                            Ctx::Headers => header_name_reason(&key),
                            Ctx::Plain | Ctx::Args => None,
                        }
                        .or_else(|| key_reason(&key))
                    };
                    // Inside an env or headers map, string values are the map's
                    // entries; anything nested is scrubbed as it would be anywhere.
                    let inner = match (key.as_str(), &*child) {
                        (_, Value::String(_)) if matches!(ctx, Ctx::Env | Ctx::Headers) => ctx,
                        ("env", Value::Object(_)) => Ctx::Env,
                        ("headers", Value::Object(_)) => Ctx::Headers,
                        ("args", Value::Array(_)) => Ctx::Args,
                        _ => Ctx::Plain,
                    };
                    let reason = by_name.or_else(|| self.scrub(child, &key_path, inner));
                    if let Some(reason) = reason {
                        map.remove(&key);
                        self.withhold(key_path, reason);
                    }
                }
                None
            }
            Value::Number(_) | Value::Bool(_) | Value::Null => None,
        }
    }
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A file name (or path) with any part that looks like a credential hidden.
fn shown_path(rel: &str) -> String {
    rel.split('/')
        .map(|part| {
            if string_reason(part, Mode::Plain).is_some() {
                "<name withheld>".to_string()
            } else {
                clean(part)
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Control characters escaped, so a name cannot drive the terminal.
fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Planning (pure).

/// Reads and plans the default locations under `home` (`~/.claude`, `~/.claude.json`)
/// with the default options.
pub fn plan(home: &Path) -> Result<SyncPlan, CodedError> {
    plan_source(
        &ConfigSource::from_env(home, None),
        &CollectOptions::default(),
    )
}

/// Reads `src` ([`read`]) and plans it ([`plan_snapshot`]).
pub fn plan_source(src: &ConfigSource, opts: &CollectOptions) -> Result<SyncPlan, CodedError> {
    Ok(plan_snapshot(&read(src, opts)?, opts))
}

/// Decides, file by file and value by value, what may leave this machine.
pub fn plan_snapshot(snap: &Snapshot, opts: &CollectOptions) -> SyncPlan {
    let mut files = Vec::new();
    let mut withheld = Vec::new();
    let whole = |rel: &str, reason: String, withheld: &mut Vec<Withheld>| {
        withheld.push(Withheld {
            path: shown_path(rel),
            json_path: None,
            reason,
        });
    };
    for (rel, node) in &snap.entries {
        let top_level = !rel.contains('/');
        match node {
            Node::Dir => {
                let name = rel.rsplit('/').next().unwrap_or(rel);
                if top_level && !SYNCED_DIRS.contains(&rel.as_str()) {
                    whole(rel, top_reason(rel).into(), &mut withheld);
                } else if name == ".git" {
                    whole(rel, "version control data".into(), &mut withheld);
                }
            }
            Node::Symlink { outside } => {
                let reason = if *outside {
                    "a symlink to a path outside the config dir (not followed)"
                } else {
                    "a symlink (not followed: symlinks are never synced)"
                };
                whole(rel, reason.into(), &mut withheld);
            }
            Node::Special => whole(rel, "not a regular file".into(), &mut withheld),
            Node::TooLarge(n) => whole(
                rel,
                format!(
                    "too large ({}; the limit is {})",
                    bytes(*n),
                    bytes(MAX_FILE_BYTES)
                ),
                &mut withheld,
            ),
            Node::Unreadable(e) => whole(rel, format!("unreadable: {}", clean(e)), &mut withheld),
            Node::NotUtf8 => whole(rel, "its name is not UTF-8".into(), &mut withheld),
            Node::OverLimit => whole(
                rel,
                format!(
                    "not read, nor anything after it: the config has more than {MAX_ENTRIES} entries or {}",
                    bytes(MAX_TOTAL_BYTES)
                ),
                &mut withheld,
            ),
            Node::Unread => match classify(rel, opts) {
                Kind::Withhold(reason) => whole(rel, reason.into(), &mut withheld),
                // Read nothing of a file the planner would sync: say so.
                Kind::Json | Kind::Text => whole(rel, "not read".into(), &mut withheld),
            },
            Node::File(data) => {
                if let Some(reason) = rel.split('/').find_map(|p| string_reason(p, Mode::Plain)) {
                    whole(
                        rel,
                        format!("its name {}", lowercase_first(&reason)),
                        &mut withheld,
                    );
                    continue;
                }
                match classify(rel, opts) {
                    Kind::Withhold(reason) => whole(rel, reason.into(), &mut withheld),
                    Kind::Text => {
                        let text = String::from_utf8_lossy(data);
                        match string_reason(&text, Mode::Plain) {
                            Some(reason) => whole(
                                rel,
                                format!(
                                    "the file {} (it is not JSON, so it is withheld whole)",
                                    lowercase_first(&reason)
                                ),
                                &mut withheld,
                            ),
                            None => files.push(PlannedFile {
                                rel_path: rel.clone(),
                                bytes: data.clone(),
                            }),
                        }
                    }
                    Kind::Json => match serde_json::from_slice::<Value>(data) {
                        Ok(mut value) => {
                            let mut scrubber = Scrubber {
                                file: rel,
                                withheld: &mut withheld,
                            };
                            match scrubber.scrub(&mut value, "", Ctx::Plain) {
                                Some(reason) => whole(rel, reason, &mut withheld),
                                // Written back even when nothing was removed: the
                                // original bytes could hide a value the parse dropped
                                // (a duplicate key).
                                None => files.push(PlannedFile {
                                    rel_path: rel.clone(),
                                    bytes: pretty(&value),
                                }),
                            }
                        }
                        Err(e) => whole(
                            rel,
                            format!(
                                "not valid JSON ({}), so its secrets cannot be removed",
                                e.classify_name()
                            ),
                            &mut withheld,
                        ),
                    },
                }
            }
        }
    }
    mcp_servers(snap, opts, &mut files, &mut withheld);
    files.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    files.dedup_by(|a, b| a.rel_path == b.rel_path);
    withheld.sort();
    withheld.dedup();
    SyncPlan { files, withheld }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "a syntax error",
            serde_json::error::Category::Data => "bad data",
            serde_json::error::Category::Eof => "it ends early",
        }
    }
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

/// `.claude.json`: only `mcpServers`, scrubbed, as [`MCP_SERVERS_FILE`].
fn mcp_servers(
    snap: &Snapshot,
    opts: &CollectOptions,
    files: &mut Vec<PlannedFile>,
    withheld: &mut Vec<Withheld>,
) {
    const FILE: &str = ".claude.json";
    let note = |json_path: Option<&str>, reason: String, withheld: &mut Vec<Withheld>| {
        withheld.push(Withheld {
            path: FILE.into(),
            json_path: json_path.map(str::to_string),
            reason,
        });
    };
    let data = match &snap.claude_json {
        None => return,
        Some(Node::File(data)) => data,
        Some(Node::Symlink { .. }) => {
            return note(
                None,
                "a symlink (not followed); mcpServers not synced".into(),
                withheld,
            );
        }
        Some(Node::TooLarge(n)) => {
            return note(
                None,
                format!("too large ({}); mcpServers not synced", bytes(*n)),
                withheld,
            );
        }
        Some(other) => {
            return note(
                None,
                format!("not read ({other:?}); mcpServers not synced"),
                withheld,
            );
        }
    };
    if snap.claude_json_outside {
        note(None, top_reason(FILE).into(), withheld);
    }
    let servers = match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(mut state)) => state.remove("mcpServers"),
        Ok(_) | Err(_) => {
            return note(
                None,
                "not a JSON object; mcpServers not synced".into(),
                withheld,
            );
        }
    };
    let mut servers = match servers {
        None => return,
        Some(Value::Object(servers)) => servers,
        Some(_) => {
            return note(
                Some("mcpServers"),
                "not a JSON object; not synced".into(),
                withheld,
            );
        }
    };
    if !opts.include_mcp_secrets {
        for (name, server) in servers.iter_mut() {
            let Some(server) = server.as_object_mut() else {
                continue;
            };
            for field in ["env", "headers"] {
                if server.remove(field).is_some() {
                    let path = child_path(&child_path("mcpServers", name), field);
                    note(
                        Some(&path),
                        format!(
                            "MCP server {} may hold secrets (`--include-mcp-secrets` syncs the entries that do not look like credentials)",
                            if field == "env" {
                                "environment"
                            } else {
                                "headers"
                            }
                        ),
                        withheld,
                    );
                }
            }
        }
    }
    let mut value = Value::Object(Map::from_iter([(
        "mcpServers".to_string(),
        Value::Object(servers),
    )]));
    let mut scrubber = Scrubber {
        file: FILE,
        withheld,
    };
    if scrubber.scrub(&mut value, "", Ctx::Plain).is_none() {
        files.push(PlannedFile {
            rel_path: MCP_SERVERS_FILE.into(),
            bytes: pretty(&value),
        });
    }
}

// ---------------------------------------------------------------------------
// The volume side (pure).

/// The volume's record of the synced files (at [`MANIFEST_PATH`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteManifest {
    pub version: u32,
    /// Path (relative to [`VOLUME_DIR`]) to blake3 hex.
    pub files: BTreeMap<String, String>,
}

/// What a sync does to the volume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Paths of new or changed files (in [`SyncPlan::files`]).
    pub upload: Vec<String>,
    /// Paths on the volume that are no longer synced.
    pub delete: Vec<String>,
    /// Paths already on the volume with the same content.
    pub unchanged: Vec<String>,
    /// The manifest after the sync.
    pub next: RemoteManifest,
}

impl Changes {
    /// Nothing to upload or delete.
    pub fn is_noop(&self) -> bool {
        self.upload.is_empty() && self.delete.is_empty()
    }
}

/// Compares a plan with what the volume has.
pub fn changes(plan: &SyncPlan, remote: Option<&RemoteManifest>) -> Changes {
    let empty = BTreeMap::new();
    let remote_files = remote.map(|m| &m.files).unwrap_or(&empty);
    // An unknown manifest version: trust none of its hashes, but still delete its files.
    let trusted = remote.is_some_and(|m| m.version == MANIFEST_VERSION);
    let mut out = Changes {
        next: RemoteManifest {
            version: MANIFEST_VERSION,
            files: BTreeMap::new(),
        },
        ..Changes::default()
    };
    let mut local = BTreeSet::new();
    for file in &plan.files {
        let hash = file.hash();
        local.insert(file.rel_path.clone());
        if trusted && remote_files.get(&file.rel_path) == Some(&hash) {
            out.unchanged.push(file.rel_path.clone());
        } else {
            out.upload.push(file.rel_path.clone());
        }
        out.next.files.insert(file.rel_path.clone(), hash);
    }
    out.delete = remote_files
        .keys()
        .filter(|path| !local.contains(*path))
        .cloned()
        .collect();
    out
}

fn render_withheld(out: &mut String, withheld: &[Withheld]) {
    if withheld.is_empty() {
        return;
    }
    let _ = writeln!(out, "Withheld (never leaves this machine):");
    for w in withheld {
        match &w.json_path {
            Some(json_path) => {
                let _ = writeln!(out, "  {}: {}: {}", w.path, clean(json_path), w.reason);
            }
            None => {
                let _ = writeln!(out, "  {}: {}", w.path, w.reason);
            }
        }
    }
}

/// `config sync --dry-run`: every file that would be synced, and everything withheld.
pub fn render_dry_run(plan: &SyncPlan) -> String {
    let mut out = String::new();
    let total: u64 = plan.files.iter().map(PlannedFile::size).sum();
    let _ = writeln!(
        out,
        "Claude Code config (dry run): {} files to sync ({}), {} withheld",
        plan.files.len(),
        bytes(total),
        plan.withheld.len(),
    );
    for file in &plan.files {
        let _ = writeln!(
            out,
            "  would upload {} ({})",
            clean(&file.rel_path),
            bytes(file.size())
        );
    }
    render_withheld(&mut out, &plan.withheld);
    out
}

/// What a sync did (or, with `dry_run`, would do), and what stays home and why.
pub fn render_sync(plan: &SyncPlan, changes: &Changes, dry_run: bool) -> String {
    let mut out = String::new();
    let (up, del) = if dry_run {
        ("would upload", "would delete")
    } else {
        ("upload", "delete")
    };
    let sizes: BTreeMap<&str, u64> = plan
        .files
        .iter()
        .map(|f| (f.rel_path.as_str(), f.size()))
        .collect();
    let total: u64 = changes
        .upload
        .iter()
        .filter_map(|p| sizes.get(p.as_str()))
        .sum();
    let _ = writeln!(
        out,
        "Claude Code config{}: {} to upload ({}), {} to delete, {} unchanged, {} withheld",
        if dry_run { " (dry run)" } else { "" },
        changes.upload.len(),
        bytes(total),
        changes.delete.len(),
        changes.unchanged.len(),
        plan.withheld.len(),
    );
    for path in &changes.upload {
        let size = sizes.get(path.as_str()).copied().unwrap_or(0);
        let _ = writeln!(out, "  {up:<12} {} ({})", clean(path), bytes(size));
    }
    for path in &changes.delete {
        let _ = writeln!(out, "  {del:<12} {}", clean(path));
    }
    render_withheld(&mut out, &plan.withheld);
    if changes.is_noop() {
        let _ = writeln!(out, "Nothing to sync: the volume is up to date.");
    }
    out
}

/// `config sync --dry-run --json`: `{"dry_run", "files": [{path, size, blake3}],
/// "withheld": [{path, json_path, reason}]}`.
pub fn dry_run_json(plan: &SyncPlan) -> Value {
    json!({
        "dry_run": true,
        "files": plan.files.iter().map(|f| json!({
            "path": f.rel_path,
            "size": f.size(),
            "blake3": f.hash(),
        })).collect::<Vec<_>>(),
        "withheld": plan.withheld,
    })
}

/// A local file holding exactly `file`'s bytes, written under `scratch` at its path.
pub fn materialize(file: &PlannedFile, scratch: &Path) -> std::io::Result<PathBuf> {
    let rel = Path::new(&file.rel_path);
    if file.rel_path.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("unsafe sync path {:?}", file.rel_path),
        ));
    }
    let target = scratch.join(rel);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&target, &file.bytes)?;
    Ok(target)
}

#[cfg(test)]
mod tests;
