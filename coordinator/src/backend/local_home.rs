//! What a local session carries of the user's own setup, and the home it writes in.
//!
//! **The user's Claude Code setup** ([`write_user_config`]): at each launch the local
//! backend runs the same planner as `parhelia config sync` ([`crate::config_sync`]) over
//! the user's `~/.claude` (or `$CLAUDE_CONFIG_DIR`) and `.claude.json`, and writes the
//! planned bytes — never the user's files themselves — to `containers/<cid>/user-config/`.
//! The spec names that directory as `claude_config_seed`; the agent copies it into the
//! session's config dir before Claude Code starts (`agent/src/config_seed.rs`): settings,
//! `CLAUDE.md`, `rules/`, `commands/`, `agents/`, `skills/`, `output-styles/`, `plugins/`
//! and the MCP servers. Whatever the planner withholds (`.credentials.json`, the rest of
//! `.claude.json`, API keys, helpers, tokens in settings `env`, MCP `env`/`headers`) never
//! reaches the session. `--no-user-config` skips all of it.
//!
//! **The private home** ([`apply_private_home`], bubblewrap only): `sessions/<sid>/home`
//! is mounted writable at the user's home path inside the sandbox, so shell profiles,
//! caches and tools that write to `~` work, and what they write stays with the session
//! (the user's real home is never written, nor seen except as below). It holds:
//! - copies of the shell and git dotfiles ([`DOTFILES`]) made when the home is created,
//!   each withheld when it is not a regular file inside the home or its text matches a
//!   credential pattern (the planner's own check);
//! - for each `PATH` directory under the home: its tool directory (`~/.pyenv` for
//!   `~/.pyenv/shims`, `~/.cargo` and `~/.rustup` for `~/.cargo/bin`) shown read-only,
//!   except shared directories ([`SHARED_DIRS`]) where only the `PATH` entry itself is
//!   shown; credential files in a shown tool directory are masked by an empty file;
//! - a writable copy of every `PATH` directory named `shims` (pyenv, rbenv, asdf rehash
//!   into it), made without dot-files and with every dot-file removed at each launch, so
//!   a stale lock (`.pyenv-shim`) can never make a profile wait.
//!
//! Every path written is inside the private home and reached through real directories
//! only (a link the session planted there is refused, E116, never followed).

use std::io::Read as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::config_sync::{self, CollectOptions, ConfigSource, SyncPlan};
use crate::error::CodedError;
use crate::error_codes;
use crate::spec::{SandboxBind, SandboxSpec};

/// `containers/<cid>/user-config`: the planned copy of the user's Claude Code setup.
pub const USER_CONFIG_DIR: &str = "user-config";
/// `sessions/<sid>/home`: the session's private home.
pub const HOME_DIR: &str = "home";

/// Dotfiles copied into a new private home (shell profiles, readline, git, editors).
pub const DOTFILES: &[&str] = &[
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".profile",
    ".zshrc",
    ".zshenv",
    ".zprofile",
    ".zlogin",
    ".inputrc",
    ".gitconfig",
    ".editorconfig",
    ".vimrc",
];

/// Directories under the home that are never shown whole, even when a `PATH` entry is
/// in them (only that entry is): they hold other programs' data and credentials.
pub const SHARED_DIRS: &[&str] = &[
    ".local",
    ".config",
    ".cache",
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".docker",
    ".kube",
    ".claude",
    ".password-store",
    ".mozilla",
    ".pki",
    ".parhelia",
];

/// Tool directories shown together (a rustup proxy in `~/.cargo/bin` needs `~/.rustup`).
const COMPANIONS: &[(&str, &str)] = &[(".cargo", ".rustup")];

/// A dotfile or a `shims` file larger than this is not copied.
const MAX_COPY_BYTES: u64 = 1 << 20;
/// At most this many entries of one `shims` directory are copied.
const MAX_SHIMS: usize = 10_000;
/// At most this many entries of a shown tool directory are looked at for credentials.
const MAX_SCAN_ENTRIES: usize = 20_000;
/// How deep below a shown tool directory credential files are masked.
const SCAN_DEPTH: usize = 3;

fn home_error(what: impl std::fmt::Display) -> CodedError {
    CodedError::new(error_codes::PRIVATE_HOME_UNAVAILABLE, what.to_string())
}

fn config_error(what: impl std::fmt::Display) -> CodedError {
    CodedError::new(error_codes::USER_CONFIG_UNAVAILABLE, what.to_string())
}

/// Plans the user's Claude Code setup (the config-sync planner, default options) and
/// writes the planned bytes to a fresh `seed_dir` (0700). Returns the plan, so the
/// caller can say what was withheld.
pub fn write_user_config(source: &ConfigSource, seed_dir: &Path) -> Result<SyncPlan, CodedError> {
    let plan = config_sync::plan_source(source, &CollectOptions::default()).map_err(|e| {
        config_error(format!(
            "cannot read your Claude Code setup ({}): {}",
            source.claude_dir.display(),
            e.message
        ))
    })?;
    match std::fs::symlink_metadata(seed_dir) {
        Ok(_) => std::fs::remove_dir_all(seed_dir)
            .or_else(|_| std::fs::remove_file(seed_dir))
            .map_err(|e| config_error(format!("cannot clear {}: {e}", seed_dir.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(config_error(format!("{}: {e}", seed_dir.display()))),
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(seed_dir)
        .map_err(|e| config_error(format!("cannot create {}: {e}", seed_dir.display())))?;
    for file in &plan.files {
        config_sync::materialize(file, seed_dir).map_err(|e| {
            config_error(format!(
                "cannot write the session's copy of {}: {e}",
                file.rel_path
            ))
        })?;
    }
    Ok(plan)
}

/// What [`apply_private_home`] did, for the coordinator's log (never file contents).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HomeReport {
    /// Dotfiles copied into the private home (this launch).
    pub copied: Vec<String>,
    /// Dotfiles not copied, and why.
    pub withheld: Vec<(String, String)>,
    /// Tool directories shown read-only.
    pub tools: Vec<PathBuf>,
    /// `shims` directories given a writable copy.
    pub shims: Vec<PathBuf>,
    /// Credential files masked in shown tool directories.
    pub masked: Vec<PathBuf>,
}

/// Gives a sandbox spec the session's private home (see the module docs): creates and
/// fills `private` (on first use; the dotfiles only with `dotfiles`, false for
/// `--no-user-config`), mounts it writable at `home`, and rewrites what the spec shows
/// of the home. `home` must be absolute and not `/` (else nothing is done).
pub fn apply_private_home(
    spec: &mut SandboxSpec,
    home: &Path,
    private: &Path,
    dotfiles: bool,
) -> Result<HomeReport, CodedError> {
    let mut report = HomeReport::default();
    if !home.is_absolute() || home == Path::new("/") {
        return Ok(report);
    }
    prepare_home(home, private, dotfiles, &mut report)?;
    // The dotfiles are the private home's now: git reads the copy (or nothing, when the
    // real one was withheld).
    spec.read_only.retain(|p| p != &home.join(".gitconfig"));

    // PATH entries under the home (the spec shows them read-only): their tool dirs.
    let path_dirs: Vec<PathBuf> = spec
        .read_only
        .iter()
        .filter(|p| p.starts_with(home) && *p != &home.join(".config/git"))
        .cloned()
        .collect();
    let mut binds = vec![SandboxBind {
        source: private.to_path_buf(),
        target: home.to_path_buf(),
        writable: true,
    }];
    for dir in &path_dirs {
        let Ok(rel) = dir.strip_prefix(home) else {
            continue;
        };
        let Some(Component::Normal(first)) = rel.components().next() else {
            continue;
        };
        let first = first.to_string_lossy().into_owned();
        if first.starts_with('.') && !SHARED_DIRS.contains(&first.as_str()) {
            let mut roots = vec![home.join(&first)];
            for (tool, companion) in COMPANIONS {
                if first == *tool {
                    roots.push(home.join(companion));
                }
            }
            for root in roots {
                if is_real_dir(&root) && !report.tools.contains(&root) {
                    mask_credentials(&root, &mut report.masked);
                    report.tools.push(root);
                }
            }
        }
        if dir.file_name().is_some_and(|n| n == "shims") && is_real_dir(dir) {
            let copy = private.join(rel);
            copy_shims(dir, private, rel)?;
            binds.push(SandboxBind {
                source: copy,
                target: dir.clone(),
                writable: true,
            });
            report.shims.push(dir.clone());
        }
    }
    for tool in &report.tools {
        if !spec.read_only.contains(tool) {
            spec.read_only.push(tool.clone());
        }
    }
    spec.read_only.retain(|p| !report.shims.contains(p));
    spec.hide.extend(report.masked.iter().cloned());
    spec.binds.extend(binds);
    Ok(report)
}

/// The session's private home without a sandbox (local isolation off, or bubblewrap
/// unavailable): `private` is created and filled as under bubblewrap (the dotfiles
/// copied on first use, unless `dotfiles` is false), and the caller points the
/// session's `HOME` at it, so shell profiles, caches and tools that write to `~` write
/// there, never into the user's `home`. Nothing is mounted: tools are reached through
/// the absolute `PATH` entries they already have. (Unconfined, a command that names
/// the user's home by its path can still write there: only bubblewrap prevents that.)
pub fn prepare_unconfined_home(
    home: Option<&Path>,
    private: &Path,
    dotfiles: bool,
) -> Result<HomeReport, CodedError> {
    let mut report = HomeReport::default();
    match home.filter(|h| h.is_absolute() && *h != Path::new("/")) {
        Some(home) => prepare_home(home, private, dotfiles, &mut report)?,
        None => prepare_home(Path::new("/nonexistent"), private, false, &mut report)?,
    }
    Ok(report)
}

/// Creates `private` (mode 0700) when it does not exist and, on that first use, copies
/// the dotfiles of `home` into it (with `dotfiles`). A `private` that is not a real
/// directory (a link) is refused (E116).
fn prepare_home(
    home: &Path,
    private: &Path,
    dotfiles: bool,
    report: &mut HomeReport,
) -> Result<(), CodedError> {
    let fresh = match std::fs::symlink_metadata(private) {
        Ok(meta) if meta.is_dir() => false,
        Ok(_) => {
            return Err(home_error(format!(
                "{} is not a directory",
                private.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(private)
                .map_err(|e| home_error(format!("cannot create {}: {e}", private.display())))?;
            true
        }
        Err(e) => return Err(home_error(format!("{}: {e}", private.display()))),
    };
    if fresh && dotfiles {
        copy_dotfiles(home, private, report)?;
    }
    Ok(())
}

fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Reads at most [`MAX_COPY_BYTES`] of a regular file, never through a link.
fn read_regular(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(|e| format!("unreadable: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("unreadable: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_COPY_BYTES {
        return Err(format!("larger than {MAX_COPY_BYTES} bytes"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_COPY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("unreadable: {e}"))?;
    if bytes.len() as u64 > MAX_COPY_BYTES {
        return Err(format!("larger than {MAX_COPY_BYTES} bytes"));
    }
    Ok(bytes)
}

/// Writes a new file in the private home: never through or over anything there.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    file.write_all(bytes)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

fn copy_dotfiles(home: &Path, private: &Path, report: &mut HomeReport) -> Result<(), CodedError> {
    let real_home = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    for name in DOTFILES {
        let source = home.join(name);
        let meta = match std::fs::symlink_metadata(&source) {
            Ok(meta) => meta,
            Err(_) => continue,
        };
        // A dotfile manager's link is followed only to a regular file inside the home.
        let from = if meta.file_type().is_symlink() {
            match std::fs::canonicalize(&source) {
                Ok(target) if target.starts_with(&real_home) => target,
                _ => {
                    report.withheld.push((
                        name.to_string(),
                        "a link to a path outside the home (not followed)".into(),
                    ));
                    continue;
                }
            }
        } else {
            source.clone()
        };
        let bytes = match read_regular(&from) {
            Ok(bytes) => bytes,
            Err(why) => {
                report.withheld.push((name.to_string(), why));
                continue;
            }
        };
        if let Some(why) = config_sync::text_secret_reason(&String::from_utf8_lossy(&bytes)) {
            report.withheld.push((
                name.to_string(),
                format!("the file {why} (credentials stay home)"),
            ));
            continue;
        }
        let mode = std::fs::metadata(&from)
            .map(|m| m.permissions().mode() & 0o755)
            .unwrap_or(0o644)
            | 0o600;
        write_new(&private.join(name), &bytes, mode).map_err(|e| {
            home_error(format!(
                "cannot copy {name} into {}: {e}",
                private.display()
            ))
        })?;
        report.copied.push(name.to_string());
    }
    Ok(())
}

/// Makes `private/rel` a directory through real directories only (creating what is
/// missing, 0700); a link or file on the way is refused.
fn real_dirs(private: &Path, rel: &Path) -> Result<PathBuf, CodedError> {
    let mut at = private.to_path_buf();
    for part in rel.components() {
        let Component::Normal(part) = part else {
            return Err(home_error(format!("unsafe path {}", rel.display())));
        };
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(home_error(format!(
                    "{} is not a directory (a link or file in the session's home; it is not followed)",
                    at.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&at)
                    .map_err(|e| home_error(format!("cannot create {}: {e}", at.display())))?;
            }
            Err(e) => return Err(home_error(format!("{}: {e}", at.display()))),
        }
    }
    Ok(at)
}

/// The private copy of a `shims` directory: made once (regular files and links, no
/// dot-files), and at every launch emptied of dot-files (locks a killed shell left).
fn copy_shims(source: &Path, private: &Path, rel: &Path) -> Result<(), CodedError> {
    let existed = is_real_dir(&private.join(rel));
    let dest = real_dirs(private, rel)?;
    if existed {
        let entries =
            std::fs::read_dir(&dest).map_err(|e| home_error(format!("{}: {e}", dest.display())))?;
        for entry in entries.flatten().take(MAX_SHIMS) {
            let name = entry.file_name();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if name.to_string_lossy().starts_with('.') && !is_dir {
                std::fs::remove_file(entry.path()).map_err(|e| {
                    home_error(format!("cannot remove {}: {e}", entry.path().display()))
                })?;
            }
        }
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(source) else {
        return Ok(());
    };
    for entry in entries.flatten().take(MAX_SHIMS) {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let target = dest.join(&name);
        if kind.is_symlink() {
            if let Ok(link) = std::fs::read_link(entry.path()) {
                let _ = std::os::unix::fs::symlink(link, &target);
            }
        } else if kind.is_file()
            && let Ok(bytes) = read_regular(&entry.path())
        {
            let mode = entry
                .metadata()
                .map(|m| m.permissions().mode() & 0o755)
                .unwrap_or(0o755);
            write_new(&target, &bytes, mode | 0o600)
                .map_err(|e| home_error(format!("cannot copy into {}: {e}", target.display())))?;
        }
    }
    Ok(())
}

/// Credential files (by the planner's names, and `credentials.toml`) within
/// [`SCAN_DEPTH`] levels of a shown tool directory.
fn mask_credentials(root: &Path, masked: &mut Vec<PathBuf>) {
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .max_depth(SCAN_DEPTH)
        .follow_links(false)
        .into_iter()
        .take(MAX_SCAN_ENTRIES)
        .flatten();
    for entry in walker {
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
        if config_sync::is_credential_file_name(&name) || name == "credentials.toml" {
            masked.push(entry.path().to_path_buf());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_for(home: &Path, path_dirs: &[&str]) -> SandboxSpec {
        let mut read_only: Vec<PathBuf> = path_dirs.iter().map(|d| home.join(d)).collect();
        read_only.push(home.join(".gitconfig"));
        read_only.push(home.join(".config/git"));
        SandboxSpec {
            hide: vec![home.to_path_buf()],
            read_only,
            writable: vec![],
            binds: vec![],
        }
    }

    #[test]
    fn the_private_home_copies_dotfiles_and_withholds_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let private = dir.path().join("private");
        std::fs::create_dir_all(home.join(".pyenv/shims")).unwrap();
        std::fs::create_dir_all(home.join(".cargo/bin")).unwrap();
        std::fs::create_dir_all(home.join(".rustup")).unwrap();
        std::fs::create_dir_all(home.join(".local/bin")).unwrap();
        std::fs::create_dir_all(home.join(".local/share/keyrings")).unwrap();
        std::fs::write(home.join(".bashrc"), "eval \"$(pyenv init -)\"\n").unwrap();
        std::fs::write(
            home.join(".zshrc"),
            "export GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("outside"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), home.join(".profile")).unwrap();
        std::fs::write(home.join(".gitconfig"), "[user]\nname = U\n").unwrap();
        std::fs::write(home.join(".pyenv/shims/python"), "#!/bin/sh\n").unwrap();
        std::fs::write(home.join(".pyenv/shims/.pyenv-shim"), "").unwrap();
        std::fs::write(home.join(".cargo/credentials.toml"), "token = \"x\"").unwrap();

        let mut spec = spec_for(&home, &[".pyenv/shims", ".cargo/bin", ".local/bin"]);
        let report = apply_private_home(&mut spec, &home, &private, true).unwrap();
        assert_eq!(report.copied, vec![".bashrc", ".gitconfig"]);
        let withheld: Vec<&str> = report.withheld.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(withheld, vec![".profile", ".zshrc"]);
        assert!(!private.join(".zshrc").exists());
        assert_eq!(
            std::fs::read_to_string(private.join(".bashrc")).unwrap(),
            "eval \"$(pyenv init -)\"\n"
        );
        // Tool dirs whole (and rustup with cargo), `.local` only as its PATH entry.
        for tool in [".pyenv", ".cargo", ".rustup", ".local/bin"] {
            assert!(spec.read_only.contains(&home.join(tool)), "{tool}");
        }
        assert!(!spec.read_only.contains(&home.join(".local")));
        assert!(!spec.read_only.contains(&home.join(".gitconfig")));
        assert!(spec.hide.contains(&home.join(".cargo/credentials.toml")));
        // The shims: a writable private copy without the lock, bound over the real one.
        assert!(private.join(".pyenv/shims/python").is_file());
        assert!(!private.join(".pyenv/shims/.pyenv-shim").exists());
        assert!(!spec.read_only.contains(&home.join(".pyenv/shims")));
        assert!(spec.binds.contains(&SandboxBind {
            source: private.join(".pyenv/shims"),
            target: home.join(".pyenv/shims"),
            writable: true,
        }));
        assert_eq!(
            spec.binds[0],
            SandboxBind {
                source: private.clone(),
                target: home.clone(),
                writable: true
            }
        );

        // The next launch keeps the session's own files and clears a stale lock.
        std::fs::write(private.join(".bashrc"), "# the session's own\n").unwrap();
        std::fs::write(private.join(".pyenv/shims/.pyenv-shim"), "").unwrap();
        let mut spec = spec_for(&home, &[".pyenv/shims"]);
        let report = apply_private_home(&mut spec, &home, &private, true).unwrap();
        assert!(report.copied.is_empty());
        assert_eq!(
            std::fs::read_to_string(private.join(".bashrc")).unwrap(),
            "# the session's own\n"
        );
        assert!(!private.join(".pyenv/shims/.pyenv-shim").exists());
    }

    #[test]
    fn a_link_the_session_planted_in_its_home_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let private = dir.path().join("private");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(home.join(".pyenv/shims")).unwrap();
        std::fs::write(home.join(".pyenv/shims/python"), "#!/bin/sh\n").unwrap();
        std::fs::create_dir_all(&private).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        // The session made its `.pyenv` a link to a directory of the user's.
        std::os::unix::fs::symlink(&elsewhere, private.join(".pyenv")).unwrap();
        let mut spec = spec_for(&home, &[".pyenv/shims"]);
        let err = apply_private_home(&mut spec, &home, &private, true).unwrap_err();
        assert_eq!(err.code, error_codes::PRIVATE_HOME_UNAVAILABLE);
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn the_user_config_is_the_planned_bytes_without_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let claude = home.join(".claude");
        std::fs::create_dir_all(claude.join("commands")).unwrap();
        std::fs::write(claude.join("CLAUDE.md"), "Always answer in haiku.\n").unwrap();
        std::fs::write(claude.join("commands/greet.md"), "Say hello.\n").unwrap();
        std::fs::write(
            claude.join(".credentials.json"),
            r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-PLANTEDPLANTEDPLANTED"}}"#,
        )
        .unwrap();
        std::fs::write(
            claude.join("settings.json"),
            r#"{"model":"opus","apiKeyHelper":"echo sk-ant-api03-PLANTEDPLANTED","env":{"ANTHROPIC_API_KEY":"sk-ant-api03-PLANTEDPLANTEDPLANTED","EDITOR":"vim"}}"#,
        )
        .unwrap();
        std::fs::write(
            home.join(".claude.json"),
            r#"{"oauthAccount":{"emailAddress":"u@example.com"},"primaryApiKey":"sk-ant-api03-PLANTEDPLANTEDPLANTED","mcpServers":{"probe":{"command":"python3","args":["-c","print(1)"]}}}"#,
        )
        .unwrap();
        let seed = dir.path().join("seed");
        let plan = write_user_config(&ConfigSource::from_env(&home, None), &seed).unwrap();
        assert!(!plan.withheld.is_empty());
        let mut all = String::new();
        for entry in walkdir::WalkDir::new(&seed) {
            let entry = entry.unwrap();
            if entry.file_type().is_file() {
                all.push_str(&std::fs::read_to_string(entry.path()).unwrap());
            }
        }
        assert!(all.contains("Always answer in haiku."), "{all}");
        assert!(all.contains("Say hello."), "{all}");
        assert!(all.contains("\"probe\""), "{all}");
        assert!(all.contains("\"EDITOR\""), "{all}");
        assert!(!all.contains("PLANTED"), "{all}");
        assert!(!all.contains("u@example.com"), "{all}");
        assert!(!seed.join(".credentials.json").exists());

        // An unreadable config dir is E115, not a session without the user's setup.
        std::fs::remove_dir_all(&claude).unwrap();
        std::fs::write(&claude, "not a dir").unwrap();
        let err = write_user_config(&ConfigSource::from_env(&home, None), &seed).unwrap_err();
        assert_eq!(err.code, error_codes::USER_CONFIG_UNAVAILABLE);
    }
}
