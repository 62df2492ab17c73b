//! `parhelia session pull`: a session's result as a local git branch.
//!
//! The checkpoint's `workspace` tree is restored into a private temporary directory; if
//! it holds uncommitted work (tracked changes or untracked files that `.gitignore` does
//! not exclude), that work is committed there, under a fixed identity; then the user's
//! repository fetches the result into `refs/heads/<branch>`.
//!
//! Promises:
//! - The user's repository gains one branch ref and the objects it needs, nothing else:
//!   no checkout, reset, stash or status runs there, so its HEAD, current branch, index
//!   and working tree are untouched (`--no-write-fetch-head`: not even `FETCH_HEAD`).
//! - The branch is never the current branch or one checked out in another worktree
//!   (E109), and an existing branch moves only with `force` (E108). Branch names are
//!   checked with `git check-ref-format --branch`.
//! - The session's repository is untrusted (whatever ran in the session could write
//!   `.git/`), and git runs on it unsandboxed. Before any git command runs on the copy,
//!   `check_git_dir` refuses it (E110, naming the path) unless `.git` is a directory
//!   holding only directories and regular files (no symlink, fifo, socket or device:
//!   nothing git opens there can lead outside the copy) and no file that names other
//!   places (`commondir`, `objects/info/alternates`, a `reftable/tables.list` entry
//!   with a `/`). Then its hooks, `config.worktree`, linked-worktree records and the
//!   multi-pack-index/commit-graph caches are deleted and its `.git/config` is replaced
//!   by the few format keys git needs, so nothing it configures (fsmonitor, hooks,
//!   worktree, filters, include paths) runs here.
//! - Symlinks in the session's working tree are committed as links (git never follows
//!   them), so no outside file's content reaches the branch.
//! - The scratch copy is removed on every exit (success, error, panic); a pull killed
//!   before it could remove it leaves it for the next pull to remove (see `Scratch`).
//! - Errors are coded: E107 when the user's directory or the session's workspace is not
//!   a git repository, E110 for an unsafe session repository, E100 for a bad branch
//!   name, checkpoint codes from the store, E500 when git itself fails.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use parhelia_checkpoint::{CheckpointId, OnRestoreProgress, Store};

use crate::error::CodedError;
use crate::error_codes;

/// What to pull, from where, into what.
pub struct PullRequest<'a> {
    /// The session's checkpoint store.
    pub store: &'a Store,
    pub checkpoint: &'a CheckpointId,
    /// The user's repository (any directory inside it).
    pub repo: &'a Path,
    pub branch: &'a str,
    pub session_id: &'a str,
    /// Move the branch if it exists.
    pub force: bool,
}

/// What a pull did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullOutcome {
    pub branch: String,
    /// The branch's new commit.
    pub commit: String,
    /// The session repository's HEAD commit (None: it had no commit yet).
    pub head_in_session: Option<String>,
    /// Whether uncommitted work was committed on top of `head_in_session`.
    pub committed_uncommitted: bool,
    /// Files in that commit (0 when there was none).
    pub changed_files: usize,
}

/// `parhelia/<session-id>`.
pub fn default_branch(session_id: &str) -> String {
    format!("parhelia/{session_id}")
}

/// The identity and safety settings for every git command run in the session's copy.
const SESSION_GIT_CONFIG: &[&str] = &[
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "commit.gpgSign=false",
    "gc.auto=0",
    "maintenance.auto=false",
    "rerere.enabled=false",
    "submodule.recurse=false",
    "user.name=Parhelia",
    "user.email=parhelia@localhost",
];

/// Environment variables that would point git at another repository.
const GIT_LOCATION_VARIABLES: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
];

/// Brings the session's result at `checkpoint` into `repo` as `branch` (see the module
/// docs).
pub fn pull(req: &PullRequest) -> Result<PullOutcome, CodedError> {
    pull_reporting(req, &|_| {})
}

/// [`pull`], telling `on_restore` how far the restore of the checkpoint's workspace
/// has got (files and bytes of the tree, see [`Store::restore_tree_reporting`]).
pub fn pull_reporting(
    req: &PullRequest,
    on_restore: OnRestoreProgress<'_>,
) -> Result<PullOutcome, CodedError> {
    pull_in(req, &std::env::temp_dir(), on_restore)
}

/// [`pull`], with its scratch directory made in `scratch_parent` (tests point it at a
/// directory of their own to see that nothing is left behind).
fn pull_in(
    req: &PullRequest,
    scratch_parent: &Path,
    on_restore: OnRestoreProgress<'_>,
) -> Result<PullOutcome, CodedError> {
    let branch = req.branch;
    let repo = Git::new(req.repo);
    if !repo.run(["rev-parse", "--git-dir"])?.status.success() {
        return Err(CodedError::new(
            error_codes::NOT_A_GIT_REPOSITORY,
            format!("{} is not a git repository", req.repo.display()),
        ));
    }
    check_branch_name(&repo, branch)?;
    let refname = format!("refs/heads/{branch}");
    check_not_checked_out(&repo, &refname, branch)?;
    let exists = repo
        .run(["rev-parse", "--verify", "--quiet", &refname])?
        .status
        .success();
    if exists && !req.force {
        return Err(CodedError::new(
            error_codes::BRANCH_EXISTS,
            format!("branch {branch} already exists (use --force to move it)"),
        ));
    }

    let scratch = Scratch::new(scratch_parent, req.session_id)?;
    let workspace = scratch.path.join("workspace");
    req.store
        .restore_tree_reporting(
            req.checkpoint,
            crate::checkpoints::WORKSPACE_TREE,
            &workspace,
            on_restore,
        )
        .map_err(|e| crate::checkpoints::coded(&e))?;
    let session = open_session_repo(&workspace, req.session_id, req.checkpoint)?;

    let head_in_session =
        session.stdout_if_ok(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"])?;
    session.check(["add", "--all"], "stage the session's uncommitted work")?;
    let staged = session.check(
        [
            "diff",
            "--cached",
            "--name-only",
            "-z",
            "--no-renames",
            "--no-ext-diff",
            "--no-textconv",
        ],
        "list the session's uncommitted work",
    )?;
    let changed_files = staged.split('\0').filter(|s| !s.is_empty()).count();
    if changed_files > 0 {
        let message = format!(
            "parhelia: uncommitted work from session {} (checkpoint {})",
            req.session_id, req.checkpoint
        );
        session.check(
            [
                "commit",
                "--quiet",
                "--no-verify",
                "--no-edit",
                "-m",
                &message,
            ],
            "commit the session's uncommitted work",
        )?;
    } else if head_in_session.is_none() {
        return Err(CodedError::new(
            error_codes::INVALID_INPUT,
            format!(
                "nothing to pull: the repository in session {}'s workspace has no commits and no files (checkpoint {})",
                req.session_id, req.checkpoint
            ),
        ));
    }
    let commit = session.check(
        ["rev-parse", "--verify", "HEAD^{commit}"],
        "read the result",
    )?;
    let commit = commit.trim().to_string();

    let source = workspace.as_os_str().to_owned();
    let refspec = format!("+HEAD:{refname}");
    let fetch = repo.run([
        OsStr::new("fetch"),
        OsStr::new("--quiet"),
        OsStr::new("--no-tags"),
        OsStr::new("--no-write-fetch-head"),
        OsStr::new("--no-recurse-submodules"),
        OsStr::new("--"),
        &source,
        OsStr::new(&refspec),
    ])?;
    if !fetch.status.success() {
        return Err(git_failed("fetch the session's result", &fetch));
    }
    let landed = repo.stdout_if_ok(["rev-parse", "--verify", "--quiet", &refname])?;
    if landed.as_deref() != Some(commit.as_str()) {
        return Err(CodedError::new(
            error_codes::INFRASTRUCTURE_ERROR,
            format!(
                "branch {branch} does not point at the session's result {commit} after the fetch"
            ),
        ));
    }
    Ok(PullOutcome {
        branch: branch.to_string(),
        commit,
        head_in_session,
        committed_uncommitted: changed_files > 0,
        changed_files,
    })
}

fn check_branch_name(repo: &Git, branch: &str) -> Result<(), CodedError> {
    let invalid = || {
        CodedError::new(
            error_codes::INVALID_INPUT,
            format!("{branch:?} is not a valid branch name"),
        )
    };
    if branch.is_empty() || branch.starts_with('-') || branch.contains('\n') {
        return Err(invalid());
    }
    let out = repo.run(["check-ref-format", "--branch", branch])?;
    // `--branch` expands `@{-1}` and friends; only a name that is itself is accepted.
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim_end() != branch {
        return Err(invalid());
    }
    Ok(())
}

/// Refuses a branch checked out in the repository or any of its worktrees.
fn check_not_checked_out(repo: &Git, refname: &str, branch: &str) -> Result<(), CodedError> {
    let current = repo.stdout_if_ok(["symbolic-ref", "--quiet", "HEAD"])?;
    if current.as_deref() == Some(refname) {
        return Err(CodedError::new(
            error_codes::BRANCH_CHECKED_OUT,
            format!("branch {branch} is the current branch; pull never touches the working tree"),
        ));
    }
    let list = repo.run(["worktree", "list", "--porcelain"])?;
    if list.status.success() {
        let text = String::from_utf8_lossy(&list.stdout);
        let mut path = "";
        for line in text.lines() {
            if let Some(p) = line.strip_prefix("worktree ") {
                path = p;
            } else if line.strip_prefix("branch ") == Some(refname) {
                return Err(CodedError::new(
                    error_codes::BRANCH_CHECKED_OUT,
                    format!("branch {branch} is checked out in the worktree {path}"),
                ));
            }
        }
    }
    Ok(())
}

/// Checks that the restored workspace is a repository of its own that git cannot be led
/// outside of ([`check_git_dir`]), and makes it safe to run git in (see the module docs).
fn open_session_repo(
    workspace: &Path,
    session_id: &str,
    checkpoint: &CheckpointId,
) -> Result<Git, CodedError> {
    let not_a_repo = |detail: &str| {
        CodedError::new(
            error_codes::NOT_A_GIT_REPOSITORY,
            format!(
                "session {session_id}'s workspace is not a git repository (checkpoint {checkpoint}: {detail})"
            ),
        )
    };
    if let Err(e) = std::fs::symlink_metadata(workspace.join(".git"))
        && e.kind() == std::io::ErrorKind::NotFound
    {
        return Err(not_a_repo("it has no .git"));
    }
    check_git_dir(workspace, session_id, checkpoint)?;
    sanitize_git_dir(&workspace.join(".git")).map_err(|e| {
        CodedError::new(
            error_codes::INFRASTRUCTURE_ERROR,
            format!("cannot prepare the session's repository copy: {e}"),
        )
    })?;
    let mut git = Git::new(workspace);
    git.config = SESSION_GIT_CONFIG;
    git.ceiling = workspace.parent().map(Path::to_path_buf);
    let out = git.run(["rev-parse", "--git-dir"])?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(not_a_repo(err.trim()));
    }
    Ok(git)
}

/// Refuses (E110) a session repository through which git could read or write outside
/// the copy, before any git command runs on it. A total check, not a list of the paths
/// git happens to write today: `.git` must be a directory, and every entry under it a
/// directory or a regular file (never a symlink, fifo, socket or device; links are not
/// followed, so nothing outside is even looked at). Of the regular files, the ones that
/// name other places are refused too: `commondir` (another repository's refs and
/// objects) and any `objects/info/alternates` or `http-alternates` (other object
/// directories). `worktrees/` (whose `gitdir` files name linked worktrees) is checked
/// like the rest and then dropped by [`sanitize_git_dir`].
///
/// The copy is private (a 0700 directory only this process writes), so nothing changes
/// between this check and the git commands.
fn check_git_dir(
    workspace: &Path,
    session_id: &str,
    checkpoint: &CheckpointId,
) -> Result<(), CodedError> {
    let refuse = |path: &Path, why: String| {
        let shown = path.strip_prefix(workspace).unwrap_or(path);
        CodedError::new(
            error_codes::UNSAFE_REPOSITORY,
            format!(
                "session {session_id}'s repository is not safe to run git on: {:?} {why} (checkpoint {checkpoint}); nothing was changed",
                shown.to_string_lossy()
            ),
        )
    };
    let link_target =
        |path: &Path| std::fs::read_link(path).map_or_else(|_| "?".into(), |t| format!("{t:?}"));
    let dot_git = workspace.join(".git");
    let meta = std::fs::symlink_metadata(&dot_git)
        .map_err(|e| refuse(&dot_git, format!("cannot be read: {e}")))?;
    if meta.file_type().is_symlink() {
        let why = format!("is a symbolic link to {}", link_target(&dot_git));
        return Err(refuse(&dot_git, why));
    }
    if meta.is_file() {
        let why =
            "is a file (a `gitdir:` pointer to a repository elsewhere), not the repository itself";
        return Err(refuse(&dot_git, why.into()));
    }
    if !meta.is_dir() {
        return Err(refuse(
            &dot_git,
            format!("is a {}", kind(&meta.file_type())),
        ));
    }
    for entry in walkdir::WalkDir::new(&dot_git)
        .follow_links(false)
        .min_depth(1)
    {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(&dot_git).to_path_buf();
            refuse(&path, format!("cannot be read: {e}"))
        })?;
        let path = entry.path();
        let ft = entry.file_type();
        if ft.is_dir() {
            continue;
        }
        if ft.is_symlink() {
            let why = format!("is a symbolic link (to {})", link_target(path));
            return Err(refuse(path, why));
        }
        if !ft.is_file() {
            return Err(refuse(path, format!("is a {}", kind(&ft))));
        }
        let rel = path.strip_prefix(&dot_git).unwrap_or(path);
        let names_elsewhere = rel == Path::new("commondir")
            || (matches!(
                rel.file_name().and_then(OsStr::to_str),
                Some("alternates" | "http-alternates")
            ) && rel.parent().is_some_and(|p| p.ends_with("objects/info")));
        if names_elsewhere {
            let why = "names another repository's files (git would read and write there)";
            return Err(refuse(path, why.into()));
        }
        if rel == Path::new("reftable/tables.list") {
            check_reftable_list(path).map_err(|why| refuse(path, why))?;
        }
    }
    Ok(())
}

/// `reftable/tables.list` names the ref tables git reads, and deletes after compacting
/// them, relative to `reftable/`: every name must be a plain file name there.
fn check_reftable_list(path: &Path) -> Result<(), String> {
    use std::io::Read;
    const LIMIT: u64 = 1 << 20;
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(LIMIT + 1).read_to_end(&mut text))
        .map_err(|e| format!("cannot be read: {e}"))?;
    if text.len() as u64 > LIMIT {
        return Err(format!("is larger than {LIMIT} bytes"));
    }
    for name in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if name.contains(&b'/') || name == b"." || name == b".." || name.contains(&0) {
            return Err(format!(
                "names a table outside reftable/: {:?}",
                String::from_utf8_lossy(name)
            ));
        }
    }
    Ok(())
}

/// What a non-regular, non-directory, non-symlink file is, for messages.
fn kind(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device file"
    } else {
        "special file"
    }
}

/// Config keys kept from the session's `.git/config`: what git needs to read the
/// repository and its files as the session did, nothing that runs or points elsewhere.
const KEPT_CONFIG: &str = r"^(core\.(repositoryformatversion|filemode|symlinks|ignorecase|precomposeunicode|autocrlf|eol|safecrlf|checkroundtripencoding|sparsecheckout|sparsecheckoutcone)|extensions\.(objectformat|refstorage|compatobjectformat)|index\.(version|sparse|skiphash))$";

/// Deletes the hooks and `config.worktree`, a stale index lock, and rewrites `config`
/// with only [`KEPT_CONFIG`].
fn sanitize_git_dir(dot_git: &Path) -> std::io::Result<()> {
    let config = dot_git.join("config");
    let kept = if config.is_file() {
        let out = Command::new("git")
            .env_clear_git()
            .args(["config", "--file"])
            .arg(&config)
            .args(["--no-includes", "-z", "--get-regexp", KEPT_CONFIG])
            .output()?;
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::new()
    };
    let mut sections: std::collections::BTreeMap<String, Vec<(String, String)>> =
        Default::default();
    for entry in kept.split('\0').filter(|e| !e.is_empty()) {
        let (key, value) = entry.split_once('\n').unwrap_or((entry, "true"));
        if let Some((section, name)) = key.split_once('.') {
            sections
                .entry(section.to_string())
                .or_default()
                .push((name.to_string(), value.to_string()));
        }
    }
    let mut text = String::new();
    for (section, entries) in sections {
        text.push_str(&format!("[{section}]\n"));
        for (name, value) in entries {
            let value = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
                .replace('\t', "\\t");
            text.push_str(&format!("\t{name} = \"{value}\"\n"));
        }
    }
    remove_if_present(&config)?;
    std::fs::write(&config, text)?;
    // `worktrees/`: the session's linked worktrees, whose `gitdir` files name places
    // outside; nothing here needs them. The multi-pack index and commit-graph are caches
    // git rebuilds or does without; they name pack and graph files, unchecked here.
    for file in [
        "config.worktree",
        "index.lock",
        "HEAD.lock",
        "worktrees",
        "objects/pack/multi-pack-index",
        "objects/pack/multi-pack-index.d",
        "objects/info/commit-graph",
        "objects/info/commit-graphs",
    ] {
        remove_if_present(&dot_git.join(file))?;
    }
    let hooks = dot_git.join("hooks");
    match std::fs::symlink_metadata(&hooks) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&hooks)?,
        Ok(_) => std::fs::remove_file(&hooks)?,
        Err(_) => {}
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

trait CommandExt {
    fn env_clear_git(&mut self) -> &mut Self;
}

impl CommandExt for Command {
    /// Drops the variables that would point git at another repository, and prompts.
    fn env_clear_git(&mut self) -> &mut Self {
        for var in GIT_LOCATION_VARIABLES {
            self.env_remove(var);
        }
        self.env("GIT_TERMINAL_PROMPT", "0")
    }
}

/// git, run in one directory.
struct Git {
    dir: PathBuf,
    /// `-c key=value` for every command.
    config: &'static [&'static str],
    /// `GIT_CEILING_DIRECTORIES`: never look for a repository above this.
    ceiling: Option<PathBuf>,
}

impl Git {
    fn new(dir: &Path) -> Git {
        Git {
            dir: dir.to_path_buf(),
            config: &[],
            ceiling: None,
        }
    }

    fn run<I, S>(&self, args: I) -> Result<Output, CodedError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("git");
        cmd.env_clear_git().arg("-C").arg(&self.dir);
        for setting in self.config {
            cmd.arg("-c").arg(setting);
        }
        if let Some(ceiling) = &self.ceiling {
            cmd.env("GIT_CEILING_DIRECTORIES", ceiling);
        }
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                CodedError::new(
                    error_codes::INFRASTRUCTURE_ERROR,
                    format!("cannot run git: {e} (is git installed and on PATH?)"),
                )
            })
    }

    /// Trimmed stdout if the command succeeded, None if it failed.
    fn stdout_if_ok<I, S>(&self, args: I) -> Result<Option<String>, CodedError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.run(args)?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }

    /// Stdout of a command that must succeed; `what` names it in the error.
    fn check<I, S>(&self, args: I, what: &str) -> Result<String, CodedError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.run(args)?;
        if !out.status.success() {
            return Err(git_failed(what, &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn git_failed(what: &str, out: &Output) -> CodedError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    CodedError::new(
        error_codes::INFRASTRUCTURE_ERROR,
        format!("git failed to {what}: {}", stderr.trim()),
    )
}

/// Scratch directories are `<parent>/parhelia-pull-<session>-<random>`.
const SCRATCH_PREFIX: &str = "parhelia-pull-";

/// A private (0700) temporary directory, removed when dropped: on success, on every
/// error and on a panic. A pull that never got to drop it (killed, or interrupted by
/// Ctrl-C) leaves it behind; the next pull removes it: each scratch holds an exclusive
/// `flock` on its `lock` file while it lives, so a scratch whose lock can be taken has
/// no owner left.
struct Scratch {
    path: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Scratch {
    fn new(parent: &Path, session_id: &str) -> Result<Scratch, CodedError> {
        use std::os::unix::fs::DirBuilderExt;
        remove_abandoned_scratches(parent);
        let safe: String = session_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect();
        let failed = |e: String| {
            CodedError::new(
                error_codes::INFRASTRUCTURE_ERROR,
                format!(
                    "cannot create a temporary directory in {}: {e}",
                    parent.display(),
                ),
            )
        };
        let mut last = None;
        for _ in 0..8 {
            let path = parent.join(format!(
                "{SCRATCH_PREFIX}{safe}-{:016x}",
                rand::random::<u64>()
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    // Locked before it is visible under its name, so a sweep never sees
                    // a live scratch's lock free.
                    let lock = (|| {
                        let pending = path.join("lock.new");
                        let file = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&pending)?;
                        let lock = nix::fcntl::Flock::lock(
                            file,
                            nix::fcntl::FlockArg::LockExclusiveNonblock,
                        )
                        .map_err(|(_, errno)| std::io::Error::from(errno))?;
                        std::fs::rename(&pending, path.join("lock"))?;
                        Ok::<_, std::io::Error>(lock)
                    })();
                    return match lock {
                        Ok(lock) => Ok(Scratch { path, _lock: lock }),
                        Err(e) => {
                            remove_tree(&path);
                            Err(failed(e.to_string()))
                        }
                    };
                }
                Err(e) => last = Some(e),
            }
        }
        Err(failed(last.map(|e| e.to_string()).unwrap_or_default()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}

/// Removes the scratch directories in `parent` that no live pull holds (see
/// [`Scratch`]). Best effort: anything it cannot open, lock or remove is left alone.
fn remove_abandoned_scratches(parent: &Path) {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let uid = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(SCRATCH_PREFIX.as_bytes())
        {
            continue;
        }
        let path = entry.path();
        // Only our own real directories (a shared /tmp holds other users' too).
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() && meta.uid() == uid => {}
            _ => continue,
        }
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path.join("lock"))
        else {
            // No lock (yet): a pull that is just starting. Leave it.
            continue;
        };
        if let Ok(lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        {
            remove_tree(&path);
            drop(lock);
        }
    }
}

/// Removes a directory tree we made, links not followed; a directory the restored tree
/// made read-only (a session can record 0500 directories) is made writable first.
fn remove_tree(path: &Path) {
    if std::fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        if entry.file_type().is_dir() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700));
        }
    }
    let _ = std::fs::remove_dir_all(path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use parhelia_checkpoint::{ChangeHint, CreateOutcome, CreateRequest, TreeSpec};

    /// git with a fixed identity and no user or system config, for building fixtures.
    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .env_clear_git()
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=Test",
                "-c",
                "user.email=test@example.com",
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgSign=false",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn checkpoint(store: &Store, workspace: &Path, conversation: &Path) -> CheckpointId {
        std::fs::create_dir_all(conversation).unwrap();
        let request = CreateRequest {
            trees: vec![
                (
                    TreeSpec {
                        name: "workspace".into(),
                        root: workspace.to_path_buf(),
                        excludes: Vec::new(),
                    },
                    ChangeHint::Unknown,
                ),
                (
                    TreeSpec {
                        name: "conversation".into(),
                        root: conversation.to_path_buf(),
                        excludes: Vec::new(),
                    },
                    ChangeHint::Unknown,
                ),
            ],
            parent: None,
            trigger: "manual".into(),
            message: None,
            metadata: serde_json::json!({}),
            skip_if_unchanged: false,
        };
        match store.create(&request).unwrap() {
            CreateOutcome::Created(manifest) => manifest.id,
            CreateOutcome::Unchanged(id) => id,
        }
    }

    /// Every file under `dir` except `.git`, with its bytes.
    fn tree_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        walkdir::WalkDir::new(dir)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.file_name() != ".git")
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| (e.path().to_path_buf(), std::fs::read(e.path()).unwrap()))
            .collect()
    }

    /// What must not change in the user's repository.
    #[derive(Debug, PartialEq)]
    struct UserState {
        index: Vec<u8>,
        head: Vec<u8>,
        head_commit: String,
        status: String,
        files: Vec<(PathBuf, Vec<u8>)>,
    }

    fn user_state(repo: &Path) -> UserState {
        // The index bytes first: `git status` may refresh the index.
        let index = std::fs::read(repo.join(".git/index")).unwrap();
        UserState {
            index,
            head: std::fs::read(repo.join(".git/HEAD")).unwrap(),
            head_commit: git(repo, &["rev-parse", "HEAD"]),
            status: git(
                repo,
                &[
                    "--no-optional-locks",
                    "status",
                    "--porcelain",
                    "--untracked-files=all",
                ],
            ),
            files: tree_bytes(repo),
        }
    }

    struct World {
        _dir: tempfile::TempDir,
        store: Store,
        checkpoint: CheckpointId,
        user: PathBuf,
        first: String,
        second: String,
    }

    /// A session whose workspace repo has two commits, an uncommitted edit, an untracked
    /// file and an ignored one; the user's clone is at the first commit, on another
    /// branch, with a dirty working tree and a staged file.
    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("session/workspace");
        std::fs::create_dir_all(&ws).unwrap();
        git(&ws, &["init", "--quiet"]);
        write(&ws.join("a.txt"), "one\n");
        write(&ws.join(".gitignore"), "*.log\n");
        git(&ws, &["add", "-A"]);
        git(&ws, &["commit", "--quiet", "-m", "first"]);
        let first = git(&ws, &["rev-parse", "HEAD"]);

        let user = dir.path().join("user");
        git(
            dir.path(),
            &[
                "clone",
                "--quiet",
                ws.to_str().unwrap(),
                user.to_str().unwrap(),
            ],
        );
        git(&user, &["checkout", "--quiet", "-b", "feature"]);
        write(&user.join("a.txt"), "the user's own edit\n");
        write(&user.join("staged.txt"), "staged\n");
        git(&user, &["add", "staged.txt"]);
        write(&user.join("scratch.txt"), "untracked\n");

        write(&ws.join("b.txt"), "two\n");
        git(&ws, &["add", "-A"]);
        git(&ws, &["commit", "--quiet", "-m", "second"]);
        let second = git(&ws, &["rev-parse", "HEAD"]);
        write(&ws.join("a.txt"), "one, edited in the session\n");
        write(&ws.join("new/untracked.txt"), "new\n");
        write(&ws.join("debug.log"), "ignored\n");

        let store = Store::open(&dir.path().join("session/volume/checkpoints")).unwrap();
        let checkpoint = checkpoint(&store, &ws, &dir.path().join("session/conversation"));
        World {
            _dir: dir,
            store,
            checkpoint,
            user,
            first,
            second,
        }
    }

    fn request<'a>(w: &'a World, branch: &'a str, force: bool) -> PullRequest<'a> {
        PullRequest {
            store: &w.store,
            checkpoint: &w.checkpoint,
            repo: &w.user,
            branch,
            session_id: "sess-1a2b3c4d",
            force,
        }
    }

    #[test]
    fn pull_makes_a_branch_and_leaves_the_user_alone() {
        let w = world();
        let before = user_state(&w.user);
        let branch = default_branch("sess-1a2b3c4d");
        assert_eq!(branch, "parhelia/sess-1a2b3c4d");

        let outcome = pull(&request(&w, &branch, false)).unwrap();
        assert_eq!(outcome.branch, branch);
        assert_eq!(outcome.head_in_session.as_deref(), Some(w.second.as_str()));
        assert!(outcome.committed_uncommitted);
        assert_eq!(outcome.changed_files, 2);
        assert_eq!(user_state(&w.user), before);

        let u = &w.user;
        assert_eq!(git(u, &["rev-parse", &branch]), outcome.commit);
        assert_eq!(git(u, &["rev-parse", &format!("{branch}~1")]), w.second);
        assert_eq!(git(u, &["rev-parse", &format!("{branch}~2")]), w.first);
        assert_eq!(
            git(u, &["log", "-1", "--format=%s%n%an <%ae>", &branch]),
            format!(
                "parhelia: uncommitted work from session sess-1a2b3c4d (checkpoint {})\nParhelia <parhelia@localhost>",
                w.checkpoint
            )
        );
        assert_eq!(
            git(
                u,
                &["diff-tree", "--no-commit-id", "--name-only", "-r", &branch]
            ),
            "a.txt\nnew/untracked.txt"
        );
        assert_eq!(
            git(u, &["show", &format!("{branch}:a.txt")]),
            "one, edited in the session"
        );
        assert!(!u.join(".git/FETCH_HEAD").exists());
        assert_eq!(git(u, &["symbolic-ref", "HEAD"]), "refs/heads/feature");

        // Again: the branch exists.
        let err = pull(&request(&w, &branch, false)).unwrap_err();
        assert_eq!(err.code, error_codes::BRANCH_EXISTS);
        assert!(err.message.contains("--force"), "{}", err.message);
        // With force it moves.
        git(u, &["branch", "-f", &branch, &w.first]);
        let again = pull(&request(&w, &branch, true)).unwrap();
        assert_eq!(git(u, &["rev-parse", &branch]), again.commit);
        assert_eq!(git(u, &["rev-parse", &format!("{branch}~1")]), w.second);
        assert_eq!(user_state(&w.user), before);
    }

    /// What `session pull --progress json` prints on stderr for a pull of a known
    /// checkpoint: the restore's `advance` lines end at the workspace tree's file count
    /// and bytes as its manifest records them (the snapshot names them, so a total that
    /// is not the checkpoint's shows as a number and fails it).
    #[test]
    fn pull_progress_lines_count_the_checkpoints_files_and_bytes() {
        let w = world();
        let manifest = w.store.load(&w.checkpoint).unwrap();
        let tree = manifest
            .tree(crate::checkpoints::WORKSPACE_TREE)
            .unwrap()
            .clone();
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let progress = crate::progress::Progress::json_into(
            "session_pull",
            "restoring the checkpoint",
            buffer.clone(),
        );
        pull_reporting(&request(&w, "parhelia/progress", false), &|p| {
            progress.transfer(p.into())
        })
        .unwrap();
        progress.finish(true);
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let last = lines
            .iter()
            .rev()
            .find(|l| l["event"] == "advance")
            .unwrap();
        assert_eq!(last["files_done"], tree.file_count, "{text}");
        assert_eq!(last["files_total"], tree.file_count, "{text}");
        assert_eq!(last["done"], tree.total_bytes, "{text}");
        assert_eq!(last["total"], tree.total_bytes, "{text}");
        // Between the first and the last `advance` line, one per whole percent that a
        // group of written files reached: how many depends on which worker finished
        // first, so they are checked here and left out of the snapshot.
        let advances: Vec<&serde_json::Value> =
            lines.iter().filter(|l| l["event"] == "advance").collect();
        for pair in advances.windows(2) {
            assert!(
                pair[0]["done"].as_u64() <= pair[1]["done"].as_u64(),
                "{text}"
            );
            assert!(
                pair[0]["files_done"].as_u64() < pair[1]["files_done"].as_u64(),
                "{text}"
            );
        }
        let advance_count = advances.len();
        let mut advance_seen = 0;
        // The lines as printed, with the tree's figures named and the times redacted.
        let rendered: Vec<String> = text
            .lines()
            .filter(|line| {
                if !line.contains("\"event\":\"advance\"") {
                    return true;
                }
                advance_seen += 1;
                advance_seen == 1 || advance_seen == advance_count
            })
            .map(|line| {
                let (fields, _) = line.rsplit_once("\"elapsed_ms\":").unwrap();
                let mut line = format!("{fields}\"elapsed_ms\":\"[elapsed]\"}}");
                for (key, want, name) in [
                    ("files_done", tree.file_count, "[tree files]"),
                    ("files_total", tree.file_count, "[tree files]"),
                    ("done", tree.total_bytes, "[tree bytes]"),
                    ("total", tree.total_bytes, "[tree bytes]"),
                ] {
                    line = line.replace(
                        &format!("\"{key}\":{want},"),
                        &format!("\"{key}\":\"{name}\","),
                    );
                }
                line
            })
            .collect();
        insta::assert_snapshot!(rendered.join("\n"));
    }

    #[test]
    fn the_current_branch_and_bad_names_are_refused() {
        let w = world();
        let before = user_state(&w.user);
        let err = pull(&request(&w, "feature", true)).unwrap_err();
        assert_eq!(err.code, error_codes::BRANCH_CHECKED_OUT);
        for bad in ["a..b", "-f", "@{-1}", "", "x y", "HEAD~1"] {
            let err = pull(&request(&w, bad, false)).unwrap_err();
            assert_eq!(
                err.code,
                error_codes::INVALID_INPUT,
                "{bad}: {}",
                err.message
            );
        }
        // A branch checked out in another worktree.
        let other = w.user.parent().unwrap().join("other-worktree");
        git(
            &w.user,
            &[
                "worktree",
                "add",
                "--quiet",
                "-b",
                "elsewhere",
                other.to_str().unwrap(),
            ],
        );
        let err = pull(&request(&w, "elsewhere", true)).unwrap_err();
        assert_eq!(err.code, error_codes::BRANCH_CHECKED_OUT);
        assert!(err.message.contains("worktree"), "{}", err.message);
        git(
            &w.user,
            &["worktree", "remove", "--force", other.to_str().unwrap()],
        );
        assert_eq!(user_state(&w.user), before);
    }

    #[test]
    fn non_repositories_are_refused() {
        let w = world();
        let elsewhere = tempfile::tempdir().unwrap();
        let mut req = request(&w, "x", false);
        req.repo = elsewhere.path();
        let err = pull(&req).unwrap_err();
        assert_eq!(err.code, error_codes::NOT_A_GIT_REPOSITORY);

        // A session whose workspace has no repository.
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        write(&ws.join("hello.txt"), "hi\n");
        let store = Store::open(&dir.path().join("store")).unwrap();
        let cp = checkpoint(&store, &ws, &dir.path().join("conv"));
        let err = pull(&PullRequest {
            store: &store,
            checkpoint: &cp,
            repo: &w.user,
            branch: "parhelia/none",
            session_id: "sess-0",
            force: false,
        })
        .unwrap_err();
        assert_eq!(err.code, error_codes::NOT_A_GIT_REPOSITORY);
        assert!(err.message.contains("workspace is not a git repository"));
        assert!(
            git(&w.user, &["branch", "--list", "parhelia/none"]).is_empty(),
            "no branch was made"
        );
    }

    #[test]
    fn a_clean_session_is_pulled_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        git(&ws, &["init", "--quiet"]);
        write(&ws.join("a.txt"), "a\n");
        git(&ws, &["add", "-A"]);
        git(&ws, &["commit", "--quiet", "-m", "only"]);
        let head = git(&ws, &["rev-parse", "HEAD"]);
        let store = Store::open(&dir.path().join("store")).unwrap();
        let cp = checkpoint(&store, &ws, &dir.path().join("conv"));
        let user = dir.path().join("user");
        std::fs::create_dir_all(&user).unwrap();
        git(&user, &["init", "--quiet"]);
        let outcome = pull(&PullRequest {
            store: &store,
            checkpoint: &cp,
            repo: &user,
            branch: "result",
            session_id: "sess-2",
            force: false,
        })
        .unwrap();
        assert_eq!(outcome.commit, head);
        assert!(!outcome.committed_uncommitted);
        assert_eq!(outcome.changed_files, 0);
        assert_eq!(git(&user, &["rev-parse", "result"]), head);
    }

    #[test]
    fn nothing_the_session_configured_runs_here() {
        let w = world();
        let dir = w.user.parent().unwrap().to_path_buf();
        let ws = dir.join("hostile");
        std::fs::create_dir_all(&ws).unwrap();
        git(&ws, &["init", "--quiet"]);
        write(&ws.join("a.txt"), "a\n");
        git(&ws, &["add", "-A"]);
        git(&ws, &["commit", "--quiet", "-m", "base"]);
        let marker = dir.join("pwned");
        let script = format!("#!/bin/sh\ntouch '{}'\n", marker.display());
        for hook in [
            "pre-commit",
            "commit-msg",
            "post-commit",
            "pre-auto-gc",
            "reference-transaction",
        ] {
            let path = ws.join(".git/hooks").join(hook);
            write(&path, &script);
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let fsmonitor = dir.join("fsmonitor.sh");
        write(&fsmonitor, &script);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fsmonitor, std::fs::Permissions::from_mode(0o755)).unwrap();
        git(
            &ws,
            &["config", "core.fsmonitor", fsmonitor.to_str().unwrap()],
        );
        git(
            &ws,
            &[
                "config",
                "core.hooksPath",
                ws.join(".git/hooks").to_str().unwrap(),
            ],
        );
        git(
            &ws,
            &["config", "filter.evil.clean", fsmonitor.to_str().unwrap()],
        );
        write(&ws.join(".gitattributes"), "*.txt filter=evil\n");
        write(&ws.join("b.txt"), "uncommitted\n");
        let store = Store::open(&dir.join("hostile-store")).unwrap();
        let cp = checkpoint(&store, &ws, &dir.join("hostile-conv"));
        // Make sure the fixture itself did not fire the marker.
        let _ = std::fs::remove_file(&marker);

        let outcome = pull(&PullRequest {
            store: &store,
            checkpoint: &cp,
            repo: &w.user,
            branch: "parhelia/hostile",
            session_id: "sess-3",
            force: false,
        })
        .unwrap();
        assert!(outcome.committed_uncommitted);
        assert!(!marker.exists(), "a session-configured command ran");
        assert_eq!(
            git(&w.user, &["show", "parhelia/hostile:b.txt"]),
            "uncommitted"
        );
    }

    // ---- Hostile `.git` trees (issue 11, item 3) and scratch cleanup (item 10). ----

    use std::os::unix::fs::symlink;

    /// A session repository made hostile by a `plant` step, checkpointed; a directory
    /// outside it holding a sentinel file (what the planted links point at); the user's
    /// repository; and a directory of its own for the pull's scratch.
    struct Hostile {
        dir: tempfile::TempDir,
        store: Store,
        checkpoint: CheckpointId,
        outside: PathBuf,
        user: PathBuf,
        scratch: PathBuf,
    }

    const SENTINEL: &str = "the user's file, which no pull may touch\n";

    /// `plant(workspace, outside)` runs after the session repo has one commit, a packed
    /// `main` and an uncommitted file (so a pull commits, writing objects, refs, logs
    /// and `COMMIT_EDITMSG`).
    fn hostile(plant: impl FnOnce(&Path, &Path)) -> Hostile {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("session/workspace");
        std::fs::create_dir_all(&ws).unwrap();
        git(&ws, &["init", "--quiet"]);
        write(&ws.join("a.txt"), "a\n");
        git(&ws, &["add", "-A"]);
        git(&ws, &["commit", "--quiet", "-m", "base"]);
        git(&ws, &["pack-refs", "--all", "--prune"]);
        write(&ws.join("b.txt"), "uncommitted\n");
        let outside = dir.path().join("outside");
        write(&outside.join("sentinel.txt"), SENTINEL);
        plant(&ws, &outside);
        let store = Store::open(&dir.path().join("session/store")).unwrap();
        let checkpoint = checkpoint(&store, &ws, &dir.path().join("session/conversation"));
        let user = dir.path().join("user");
        std::fs::create_dir_all(&user).unwrap();
        git(&user, &["init", "--quiet"]);
        write(&user.join("mine.txt"), "mine\n");
        git(&user, &["add", "-A"]);
        git(&user, &["commit", "--quiet", "-m", "mine"]);
        let scratch = dir.path().join("tmp");
        std::fs::create_dir_all(&scratch).unwrap();
        Hostile {
            dir,
            store,
            checkpoint,
            outside,
            user,
            scratch,
        }
    }

    impl Hostile {
        fn pull(&self) -> Result<PullOutcome, CodedError> {
            pull_in(
                &PullRequest {
                    store: &self.store,
                    checkpoint: &self.checkpoint,
                    repo: &self.user,
                    branch: "parhelia/hostile",
                    session_id: "sess-hostile",
                    force: false,
                },
                &self.scratch,
                &|_| {},
            )
        }

        fn scratch_is_empty(&self) -> bool {
            std::fs::read_dir(&self.scratch).unwrap().next().is_none()
        }
    }

    /// Every entry under `dir`, links not followed: path, kind, and bytes or link target.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, &'static str, Vec<u8>)> {
        walkdir::WalkDir::new(dir)
            .sort_by_file_name()
            .into_iter()
            .map(Result::unwrap)
            .map(|e| {
                let path = e.path().to_path_buf();
                let ft = e.file_type();
                if ft.is_symlink() {
                    let target = std::fs::read_link(&path).unwrap();
                    (path, "link", target.into_os_string().into_encoded_bytes())
                } else if ft.is_dir() {
                    (path, "dir", Vec::new())
                } else {
                    let bytes = std::fs::read(&path).unwrap();
                    (path, "file", bytes)
                }
            })
            .collect()
    }

    /// Pulls the hostile checkpoint and asserts: E110 naming `offending`, nothing outside
    /// changed (no byte, no new entry), the user's repository unchanged, no branch, and
    /// no scratch left.
    fn assert_refused(h: &Hostile, offending: &str) {
        let outside_before = snapshot(&h.outside);
        let user_before = user_state(&h.user);
        let refs_before = git(&h.user, &["for-each-ref"]);
        let result = h.pull();
        assert_eq!(
            snapshot(&h.outside),
            outside_before,
            "the pull wrote outside the session's tree ({result:?})"
        );
        let err = result.expect_err("a hostile repository was pulled");
        assert_eq!(err.code, error_codes::UNSAFE_REPOSITORY, "{}", err.message);
        assert!(
            err.message.contains(offending),
            "{offending:?} is not named in: {}",
            err.message
        );
        assert_eq!(user_state(&h.user), user_before);
        assert_eq!(git(&h.user, &["for-each-ref"]), refs_before);
        assert!(h.scratch_is_empty(), "the pull left its scratch directory");
    }

    fn replace_with_link(path: &Path, target: &Path) {
        remove_if_present(path).unwrap();
        symlink(target, path).unwrap();
    }

    #[test]
    fn a_symlinked_commit_editmsg_is_refused() {
        let h = hostile(|ws, outside| {
            replace_with_link(
                &ws.join(".git/COMMIT_EDITMSG"),
                &outside.join("sentinel.txt"),
            );
        });
        assert_refused(&h, ".git/COMMIT_EDITMSG");
    }

    #[test]
    fn a_symlinked_head_log_is_refused() {
        let h = hostile(|ws, outside| {
            replace_with_link(&ws.join(".git/logs/HEAD"), &outside.join("sentinel.txt"));
        });
        assert_refused(&h, ".git/logs/HEAD");
    }

    #[test]
    fn a_symlinked_logs_directory_is_refused() {
        let h = hostile(|ws, outside| {
            replace_with_link(&ws.join(".git/logs"), outside);
        });
        assert_refused(&h, ".git/logs");
    }

    #[test]
    fn a_symlinked_refs_heads_directory_is_refused() {
        let h = hostile(|ws, outside| {
            replace_with_link(&ws.join(".git/refs/heads"), outside);
        });
        assert_refused(&h, ".git/refs/heads");
    }

    #[test]
    fn a_symlinked_objects_directory_is_refused() {
        let h = hostile(|ws, outside| {
            // The objects live outside, so the repository still works through the link.
            let objects = outside.join("objects");
            std::fs::rename(ws.join(".git/objects"), &objects).unwrap();
            symlink(&objects, ws.join(".git/objects")).unwrap();
        });
        assert_refused(&h, ".git/objects");
    }

    #[test]
    fn a_symlinked_dot_git_is_refused() {
        let h = hostile(|ws, outside| {
            let real = outside.join("real-git");
            std::fs::rename(ws.join(".git"), &real).unwrap();
            symlink(&real, ws.join(".git")).unwrap();
        });
        assert_refused(&h, ".git");
    }

    #[test]
    fn a_gitdir_file_is_refused() {
        let h = hostile(|ws, outside| {
            let real = outside.join("real-git");
            std::fs::rename(ws.join(".git"), &real).unwrap();
            write(&ws.join(".git"), &format!("gitdir: {}\n", real.display()));
        });
        assert_refused(&h, ".git");
    }

    #[test]
    fn alternates_are_refused() {
        let h = hostile(|ws, outside| {
            // Every object lives outside; the copy would read (and repack, prune...) them.
            let objects = outside.join("objects");
            std::fs::rename(ws.join(".git/objects"), &objects).unwrap();
            write(
                &ws.join(".git/objects/info/alternates"),
                &format!("{}\n", objects.display()),
            );
        });
        assert_refused(&h, ".git/objects/info/alternates");
    }

    #[test]
    fn a_commondir_is_refused() {
        let h = hostile(|ws, outside| {
            let common = outside.join("common");
            std::fs::rename(ws.join(".git/refs"), &common).unwrap();
            std::fs::create_dir_all(ws.join(".git/refs")).unwrap();
            write(
                &ws.join(".git/commondir"),
                &format!("{}\n", outside.display()),
            );
        });
        assert_refused(&h, ".git/commondir");
    }

    #[test]
    fn a_symlink_deep_in_dot_git_is_refused() {
        // Not one of the paths git writes today: the check is total, not a list.
        let h = hostile(|ws, outside| {
            symlink(outside, ws.join(".git/refs/tags/escape")).unwrap();
        });
        assert_refused(&h, ".git/refs/tags/escape");
    }

    #[test]
    fn special_files_in_dot_git_are_refused() {
        // A checkpoint cannot carry a fifo or socket (scan skips them, restore refuses
        // them), so the check is exercised on a tree directly.
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        git(&ws, &["init", "--quiet"]);
        nix::unistd::mkfifo(
            &ws.join(".git/objects/pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let err = check_git_dir(&ws, "sess-x", &CheckpointId("x".into())).unwrap_err();
        assert_eq!(err.code, error_codes::UNSAFE_REPOSITORY);
        assert!(err.message.contains(".git/objects/pipe"), "{}", err.message);
        assert!(err.message.contains("fifo"), "{}", err.message);
        std::fs::remove_file(ws.join(".git/objects/pipe")).unwrap();

        let _socket = std::os::unix::net::UnixListener::bind(ws.join(".git/refs/sock")).unwrap();
        let err = check_git_dir(&ws, "sess-x", &CheckpointId("x".into())).unwrap_err();
        assert_eq!(err.code, error_codes::UNSAFE_REPOSITORY);
        assert!(err.message.contains(".git/refs/sock"), "{}", err.message);
    }

    #[test]
    fn symlinks_in_the_working_tree_are_recorded_as_links_not_read() {
        let h = hostile(|ws, outside| {
            symlink(outside.join("sentinel.txt"), ws.join("secret")).unwrap();
            symlink(outside, ws.join("outside-dir")).unwrap();
        });
        let outside_before = snapshot(&h.outside);
        let outcome = h.pull().unwrap();
        assert_eq!(snapshot(&h.outside), outside_before);
        let tree = git(&h.user, &["ls-tree", "-r", &outcome.commit]);
        assert!(
            tree.contains("120000 blob") && tree.contains("\tsecret"),
            "{tree}"
        );
        assert!(
            !tree.contains("outside-dir/"),
            "followed a directory link: {tree}"
        );
        let target = git(
            &h.user,
            &["cat-file", "-p", &format!("{}:secret", outcome.commit)],
        );
        assert_eq!(target, h.outside.join("sentinel.txt").to_str().unwrap());
        assert!(h.scratch_is_empty());
    }

    #[test]
    fn a_git_failure_leaves_no_scratch() {
        let h = hostile(|ws, _| {
            write(&ws.join(".git/index"), "not an index");
        });
        let err = h.pull().unwrap_err();
        assert_eq!(
            err.code,
            error_codes::INFRASTRUCTURE_ERROR,
            "{}",
            err.message
        );
        assert!(
            h.scratch_is_empty(),
            "the failed pull left its scratch directory"
        );
    }

    #[test]
    fn read_only_directories_do_not_keep_the_scratch() {
        use std::os::unix::fs::PermissionsExt;
        let h = hostile(|ws, _| {
            write(&ws.join("locked/inner/file.txt"), "x\n");
            for d in ["locked/inner", "locked"] {
                std::fs::set_permissions(ws.join(d), std::fs::Permissions::from_mode(0o500))
                    .unwrap();
            }
        });
        h.pull().unwrap();
        assert!(
            h.scratch_is_empty(),
            "a read-only directory kept the scratch"
        );
        // Let the fixture's own cleanup through.
        let ws = h.dir.path().join("session/workspace");
        for d in ["locked", "locked/inner"] {
            std::fs::set_permissions(ws.join(d), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
    }

    #[test]
    fn a_panic_removes_the_scratch() {
        let parent = tempfile::tempdir().unwrap();
        let result = std::panic::catch_unwind(|| {
            let scratch = Scratch::new(parent.path(), "sess-panic").unwrap();
            write(&scratch.path.join("workspace/file"), "x");
            panic!("in the middle of a pull");
        });
        assert!(result.is_err());
        assert!(std::fs::read_dir(parent.path()).unwrap().next().is_none());
    }

    #[test]
    fn an_interrupted_pulls_scratch_is_removed_by_the_next_pull() {
        let h = hostile(|_, _| {});
        // What a pull killed mid-way leaves: its scratch, lock file unlocked.
        let abandoned = h.scratch.join("parhelia-pull-sess-old-00000000000000aa");
        write(
            &abandoned.join("workspace/.git/HEAD"),
            "ref: refs/heads/main\n",
        );
        write(&abandoned.join("lock"), "");
        // A pull still running holds its lock; one just starting has no lock yet.
        let live = Scratch::new(&h.scratch, "sess-live").unwrap();
        let starting = h.scratch.join("parhelia-pull-sess-new-00000000000000bb");
        std::fs::create_dir_all(&starting).unwrap();
        // Not a scratch at all.
        write(&h.scratch.join("unrelated.txt"), "keep\n");

        h.pull().unwrap();
        assert!(!abandoned.exists(), "the abandoned scratch is still there");
        assert!(
            live.path.join("lock").exists(),
            "a live scratch was removed"
        );
        assert!(starting.exists(), "a starting scratch was removed");
        assert!(h.scratch.join("unrelated.txt").exists());
        drop(live);
        std::fs::remove_dir(&starting).unwrap();
        std::fs::remove_file(h.scratch.join("unrelated.txt")).unwrap();
        assert!(h.scratch_is_empty());
    }

    #[test]
    fn a_session_that_used_linked_worktrees_still_pulls() {
        // `git worktree add` writes `.git/worktrees/<name>/{gitdir,commondir}`: regular
        // files the check lets through (only a top-level `commondir` is refused) and the
        // copy then drops.
        let h = hostile(|ws, outside| {
            git(
                ws,
                &[
                    "worktree",
                    "add",
                    "--quiet",
                    "-b",
                    "side",
                    outside.join("side-worktree").to_str().unwrap(),
                ],
            );
            assert!(ws.join(".git/worktrees/side-worktree/gitdir").is_file());
        });
        let outside_before = snapshot(&h.outside);
        let outcome = h.pull().unwrap();
        assert!(outcome.committed_uncommitted);
        assert_eq!(snapshot(&h.outside), outside_before);
        assert!(h.scratch_is_empty());
    }

    #[test]
    fn nested_repositories_run_nothing_and_write_nothing_outside() {
        // A nested repository whose `.git` is a `gitdir:` file pointing outside, with
        // hooks and an fsmonitor there: `git add` records it as a gitlink (reading its
        // HEAD) and runs nothing of it.
        let h = hostile(|ws, outside| {
            let other = outside.join("other-repo");
            std::fs::create_dir_all(&other).unwrap();
            git(&other, &["init", "--quiet"]);
            write(&other.join("o.txt"), "o\n");
            git(&other, &["add", "-A"]);
            git(&other, &["commit", "--quiet", "-m", "other"]);
            let marker = outside.join("pwned");
            let script = outside.join("evil.sh");
            write(
                &script,
                &format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
            );
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            git(
                &other,
                &["config", "core.fsmonitor", script.to_str().unwrap()],
            );
            git(
                &other,
                &["config", "core.hooksPath", outside.to_str().unwrap()],
            );
            for hook in ["pre-commit", "post-commit", "reference-transaction"] {
                std::fs::copy(&script, outside.join(hook)).unwrap();
            }
            write(
                &ws.join("nested/.git"),
                &format!("gitdir: {}\n", other.join(".git").display()),
            );
        });
        let outside_before = snapshot(&h.outside);
        let outcome = h.pull().unwrap();
        assert!(
            !h.outside.join("pwned").exists(),
            "a nested repository's command ran"
        );
        assert_eq!(snapshot(&h.outside), outside_before);
        let tree = git(&h.user, &["ls-tree", &outcome.commit]);
        assert!(
            tree.contains("160000 commit") && tree.contains("\tnested"),
            "{tree}"
        );
        assert!(h.scratch_is_empty());
    }

    #[test]
    fn a_reftable_list_naming_outside_tables_is_refused() {
        let h = hostile(|ws, outside| {
            std::fs::remove_dir_all(ws.join(".git")).unwrap();
            git(ws, &["init", "--quiet", "--ref-format=reftable"]);
            git(ws, &["add", "a.txt"]);
            git(ws, &["commit", "--quiet", "-m", "base"]);
            let list = ws.join(".git/reftable/tables.list");
            let mut text = std::fs::read_to_string(&list).unwrap();
            text.push_str(&format!("../../../../outside/{}\n", "x.ref"));
            std::fs::write(&list, text).unwrap();
            write(&outside.join("x.ref"), "not really a table\n");
        });
        assert_refused(&h, ".git/reftable/tables.list");
    }

    #[test]
    fn a_reftable_repository_still_pulls() {
        let h = hostile(|ws, _| {
            std::fs::remove_dir_all(ws.join(".git")).unwrap();
            git(ws, &["init", "--quiet", "--ref-format=reftable"]);
            git(ws, &["add", "a.txt"]);
            git(ws, &["commit", "--quiet", "-m", "base"]);
        });
        let outcome = h.pull().unwrap();
        assert!(outcome.committed_uncommitted);
        assert!(h.scratch_is_empty());
    }
}
