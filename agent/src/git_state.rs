//! The git state of the workspace, captured into every checkpoint's metadata:
//! HEAD, branch, a dirty summary and the stashes.
//!
//! Read-only: capturing never writes to the repository (no index refresh is
//! written back, no stash is touched). A workspace that is not a git
//! repository, or a repository git2 cannot read, gives `{"repository": false}`
//! or an `error` field rather than failing the checkpoint: the files are what
//! must be saved; git state is a description of them.
//!
//! Incremental ([`capture_incremental`], issue 19): a full status recurses the whole
//! working tree (on a 14k-file repository tens of milliseconds, at every checkpoint, while
//! hooks wait). The agent keeps the previous capture's per-path statuses ([`GitCache`]) and,
//! when the change tracker can say which paths changed, asks libgit2 only about those
//! paths (a literal pathspec: its iterators descend only into the listed paths' parents)
//! and merges the answer into the previous result — or reuses the previous result outright
//! when none changed. It falls back to a full capture whenever the previous result might
//! not carry over: no previous capture, the tracker does not know (a rescan), a changed
//! path with a `.git` component (HEAD, the index, refs, stashes, config, info/exclude; a
//! nested repository's), a changed `.gitignore`, `.gitattributes` or `.gitmodules`
//! anywhere, a `.git` that is not a real directory of the workspace (a worktree's `gitdir:`
//! file, a symlink) or a work tree elsewhere (`core.worktree`), or a change to a git file
//! outside the workspace that status reads (the global and system config, the global
//! excludes and attributes files: compared by their stat). `.git` is written by the session:
//! this is an optimisation of what libgit2 reads, never a parse of it, and every fall-back
//! is a full capture, so the result is always what a full capture would say
//! (`tests::incremental_capture_equals_a_full_one`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The captured state's types are the contract's: the coordinator reads them back from
/// checkpoint metadata (`parhelia_contract::checkpoint`).
pub use parhelia_contract::checkpoint::{DirtySummary, GitState, Stash};

/// Who reads the repository: the agent itself, or (uid separation) the session user
/// through `<agent_exe> git-state`, so git never reads a session's repository as root
/// (libgit2 refuses a repository another user owns, and should).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reader {
    Agent,
    SessionUser {
        agent_exe: PathBuf,
        uid: u32,
        gid: u32,
    },
}

/// How long the session user's reader may take, and how much it may print.
const READER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
const READER_MAX_OUTPUT: u64 = 4 << 20;

/// [`capture`] as `reader`. A reader that fails gives a state with an `error`.
pub fn capture_as(workspace: &Path, reader: &Reader) -> GitState {
    let Reader::SessionUser {
        agent_exe,
        uid,
        gid,
    } = reader
    else {
        return capture(workspace);
    };
    let failed = |why: String| GitState {
        repository: workspace.join(".git").exists(),
        error: Some(why),
        ..GitState::default()
    };
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new(agent_exe)
        .arg("git-state")
        .arg("--workspace")
        .arg(workspace)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir("/")
        .uid(*uid)
        .gid(*gid)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return failed(format!("the git state reader did not start: {e}")),
    };
    // Read on a thread so a reader that floods or hangs is cut off, never waited on.
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let output = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = (&mut stdout)
            .take(READER_MAX_OUTPUT)
            .read_to_end(&mut bytes);
        bytes
    });
    let deadline = std::time::Instant::now() + READER_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return failed("the git state reader did not finish in time".into());
            }
        }
    }
    let bytes = output.join().unwrap_or_default();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| failed(format!("the git state reader's answer is unreadable: {e}")))
}

/// Captures the git state of `workspace` (which need not be a repository).
pub fn capture(workspace: &Path) -> GitState {
    capture_full(workspace).0
}

/// The non-clean paths of a status and their status bits, by path bytes.
type Statuses = BTreeMap<Vec<u8>, git2::Status>;

/// What the previous capture leaves for the next one ([`capture_incremental`]).
#[derive(Default)]
pub struct GitCache {
    previous: Option<Previous>,
}

struct Previous {
    workspace: PathBuf,
    /// The state as captured (its `dirty` is the summary of `statuses`).
    state: GitState,
    statuses: Statuses,
    /// The files outside the workspace that status reads, with their stat then.
    outside: Vec<(PathBuf, Option<StatKey>)>,
}

/// How [`capture_incremental`] got its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// A whole status (no previous capture, or it could not carry over).
    Full,
    /// The previous result, nothing relevant having changed.
    Reused,
    /// A status of this many changed paths, merged into the previous result.
    Paths(usize),
}

/// A file's identity and change stamps: equal keys, unchanged file (as far as stat can say).
#[derive(Clone, Debug, PartialEq, Eq)]
struct StatKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stat_key(path: &Path) -> Option<StatKey> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(StatKey {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    })
}

/// The files outside a repository that can change what its status says: the system,
/// global and XDG config files and the global excludes and attributes files (named by
/// `core.excludesFile` / `core.attributesFile` or their XDG defaults).
fn outside_files(repo: &git2::Repository) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        git2::Config::find_system(),
        git2::Config::find_global(),
        git2::Config::find_xdg(),
    ]
    .into_iter()
    .filter_map(Result::ok)
    .collect();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".config")));
    if let Some(h) = &home {
        files.push(h.join(".gitconfig"));
    }
    if let Some(x) = &xdg {
        files.push(x.join("git/config"));
        files.push(x.join("git/ignore"));
        files.push(x.join("git/attributes"));
    }
    if let Ok(config) = repo.config() {
        for key in ["core.excludesfile", "core.attributesfile"] {
            if let Ok(path) = config.get_path(key) {
                files.push(path);
            }
        }
    }
    files.sort();
    files.dedup();
    files
}

/// Whether a change to `relative` can alter more than its own paths' status, or the
/// state around it (HEAD, branch, stashes): then only a full capture is exact.
fn needs_full_capture(relative: &Path) -> bool {
    relative.components().any(|c| c.as_os_str() == ".git")
        || relative
            .file_name()
            .is_some_and(|n| n == ".gitignore" || n == ".gitattributes" || n == ".gitmodules")
}

/// [`capture`], building on `cache` when `changed` — every workspace path created,
/// modified, deleted or renamed since the previous call with this cache (relative paths;
/// `None`: unknown) — allows it (see the module docs). Returns how it was done.
pub fn capture_incremental(
    workspace: &Path,
    cache: &mut GitCache,
    changed: Option<&BTreeSet<PathBuf>>,
) -> (GitState, Capture) {
    if let (Some(previous), Some(changed)) = (cache.previous.as_mut(), changed)
        && previous.workspace == workspace
        && !changed.iter().any(|p| needs_full_capture(p))
        && std::fs::symlink_metadata(workspace.join(".git")).is_ok_and(|m| m.is_dir())
        && previous
            .outside
            .iter()
            .all(|(path, key)| stat_key(path) == *key)
    {
        if changed.is_empty() {
            return (previous.state.clone(), Capture::Reused);
        }
        if let Some(statuses) = status_of_paths(workspace, changed) {
            for path in changed {
                let p = path.as_os_str().as_encoded_bytes();
                let mut under = p.to_vec();
                under.push(b'/');
                previous
                    .statuses
                    .retain(|k, _| k.as_slice() != p && !k.starts_with(&under));
            }
            previous.statuses.extend(statuses);
            previous.state.dirty = summarize(&previous.statuses);
            return (previous.state.clone(), Capture::Paths(changed.len()));
        }
    }
    let (state, previous) = capture_full(workspace);
    cache.previous = previous;
    (state, Capture::Full)
}

/// The status of `paths` only (literal paths: a directory stands for everything under
/// it), or `None` when the repository cannot be read that way.
fn status_of_paths(workspace: &Path, paths: &BTreeSet<PathBuf>) -> Option<Statuses> {
    let repo = git2::Repository::open(workspace).ok()?;
    let mut options = status_options();
    options.disable_pathspec_match(true);
    for p in paths {
        options.pathspec(p);
    }
    let statuses = repo.statuses(Some(&mut options)).ok()?;
    Some(
        statuses
            .iter()
            .map(|e| (e.path_bytes().to_vec(), e.status()))
            .collect(),
    )
}

fn status_options() -> git2::StatusOptions {
    let mut options = git2::StatusOptions::new();
    options
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .exclude_submodules(true);
    options
}

/// The dirty summary of a status.
fn summarize(statuses: &Statuses) -> DirtySummary {
    let mut d = DirtySummary::default();
    for &s in statuses.values() {
        if s.is_conflicted() {
            d.conflicted += 1;
            continue;
        }
        if s.intersects(
            git2::Status::INDEX_NEW
                | git2::Status::INDEX_MODIFIED
                | git2::Status::INDEX_DELETED
                | git2::Status::INDEX_RENAMED
                | git2::Status::INDEX_TYPECHANGE,
        ) {
            d.staged += 1;
        }
        if s.intersects(
            git2::Status::WT_MODIFIED | git2::Status::WT_RENAMED | git2::Status::WT_TYPECHANGE,
        ) {
            d.modified += 1;
        }
        if s.contains(git2::Status::WT_DELETED) {
            d.deleted += 1;
        }
        if s.contains(git2::Status::WT_NEW) {
            d.untracked += 1;
        }
    }
    d
}

/// A whole capture, and what a later incremental one may build on (none when the state
/// had an error or the work tree is not the workspace itself).
fn capture_full(workspace: &Path) -> (GitState, Option<Previous>) {
    let mut repo = match git2::Repository::open(workspace) {
        Ok(repo) => repo,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return (GitState::default(), None),
        Err(e) => {
            return (
                GitState {
                    repository: true,
                    error: Some(e.message().to_string()),
                    ..GitState::default()
                },
                None,
            );
        }
    };
    // Stamped before anything is read, so a change during the capture is seen next time.
    let outside: Vec<(PathBuf, Option<StatKey>)> = outside_files(&repo)
        .into_iter()
        .map(|p| {
            let key = stat_key(&p);
            (p, key)
        })
        .collect();
    let mut state = GitState {
        repository: true,
        ..GitState::default()
    };
    match repo.head() {
        Ok(head) => {
            state.head = head.target().map(|oid| oid.to_string());
            state.detached = !head.is_branch();
            if head.is_branch() {
                state.branch = head.shorthand().map(str::to_string);
            }
        }
        // An unborn branch (no commit yet): name it from HEAD's symbolic target.
        Err(e) if e.code() == git2::ErrorCode::UnbornBranch => {
            state.branch = repo
                .find_reference("HEAD")
                .ok()
                .and_then(|r| r.symbolic_target().map(str::to_string))
                .map(|t| t.trim_start_matches("refs/heads/").to_string());
        }
        Err(e) => state.error = Some(e.message().to_string()),
    }
    let mut statuses = Statuses::new();
    match repo.statuses(Some(&mut status_options())) {
        Ok(list) => {
            statuses = list
                .iter()
                .map(|e| (e.path_bytes().to_vec(), e.status()))
                .collect();
            state.dirty = summarize(&statuses);
        }
        Err(e) => state.error = Some(e.message().to_string()),
    }
    let mut stashes = Vec::new();
    let _ = repo.stash_foreach(|index, message, oid| {
        stashes.push(Stash {
            index,
            message: message.to_string(),
            oid: oid.to_string(),
        });
        true
    });
    state.stashes = stashes;
    // Incremental captures need the work tree to be the workspace and its git dir to be
    // the workspace's `.git` (whose changes the tracker sees).
    let own_layout = !repo.is_bare()
        && repo.workdir().is_some_and(|w| same_dir(w, workspace))
        && same_dir(repo.path(), &workspace.join(".git"));
    let previous = (state.error.is_none() && own_layout).then(|| Previous {
        workspace: workspace.to_path_buf(),
        state: state.clone(),
        statuses,
        outside,
    });
    (state, previous)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    #[test]
    fn a_plain_directory_is_not_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(capture(dir.path()), GitState::default());
    }

    #[test]
    fn head_branch_dirty_summary_and_stashes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        git(d, &["init", "-q", "-b", "main"]);
        let unborn = capture(d);
        assert!(unborn.repository);
        assert_eq!(unborn.branch.as_deref(), Some("main"));
        assert_eq!(unborn.head, None);

        std::fs::write(d.join("a.txt"), "a\n").unwrap();
        std::fs::write(d.join("b.txt"), "b\n").unwrap();
        git(d, &["add", "-A"]);
        git(d, &["commit", "-qm", "one"]);
        std::fs::write(d.join("a.txt"), "stashed\n").unwrap();
        git(d, &["stash", "push", "-qm", "wip"]);
        std::fs::write(d.join("a.txt"), "changed\n").unwrap();
        std::fs::remove_file(d.join("b.txt")).unwrap();
        std::fs::write(d.join("new.txt"), "n\n").unwrap();

        let state = capture(d);
        assert_eq!(state.branch.as_deref(), Some("main"));
        assert!(!state.detached);
        assert_eq!(state.head.as_ref().map(String::len), Some(40));
        assert_eq!(
            state.dirty,
            DirtySummary {
                modified: 1,
                deleted: 1,
                untracked: 1,
                ..DirtySummary::default()
            }
        );
        assert_eq!(state.stashes.len(), 1);
        assert!(state.stashes[0].message.contains("wip"));
    }

    /// What the change tracker would report between two states of a tree: every path
    /// created, deleted, or whose file changed — but not a directory that only gained or
    /// lost entries (the tracker reports the entries), and not what lay inside a
    /// directory that went away as a whole (a directory renamed out of the workspace
    /// reports only itself).
    fn snapshot(root: &Path) -> BTreeMap<PathBuf, (bool, u64, i128, u64)> {
        use std::os::unix::fs::MetadataExt;
        walkdir::WalkDir::new(root)
            .min_depth(1)
            .into_iter()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let m = e.path().symlink_metadata().ok()?;
                let rel = e.path().strip_prefix(root).ok()?.to_path_buf();
                let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
                Some((rel, (m.is_dir(), m.size(), mtime, m.ino())))
            })
            .collect()
    }

    fn changed_between(
        before: &BTreeMap<PathBuf, (bool, u64, i128, u64)>,
        after: &BTreeMap<PathBuf, (bool, u64, i128, u64)>,
    ) -> BTreeSet<PathBuf> {
        let mut changed = BTreeSet::new();
        for (path, now) in after {
            match before.get(path) {
                None => {
                    changed.insert(path.clone());
                }
                Some(was) if was.0 && now.0 => {}
                Some(was) if was != now => {
                    changed.insert(path.clone());
                }
                Some(_) => {}
            }
        }
        for path in before.keys() {
            if !after.contains_key(path)
                && !path
                    .parent()
                    .is_some_and(|p| before.contains_key(p) && !after.contains_key(p))
            {
                changed.insert(path.clone());
            }
        }
        changed
    }

    fn git_quiet(dir: &Path, args: &[&str]) {
        let _ = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
    }

    /// One change a session might make to its repository.
    fn apply(ws: &Path, aside: &Path, op: u8, n: usize) {
        let files = ["a.txt", "src/b.rs", "src/deep/c.rs", "docs/d.md"];
        let f = ws.join(files[n % files.len()]);
        match op % 13 {
            0 => {
                if let Some(parent) = f.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let mut text = std::fs::read_to_string(&f).unwrap_or_default();
                text.push_str(&format!("edit {n}\n"));
                std::fs::write(&f, text).unwrap();
            }
            1 => {
                let dir = ws.join(["", "src", "src/deep", "docs"][n % 4]);
                let _ = std::fs::create_dir_all(&dir);
                std::fs::write(dir.join(format!("new{n}.txt")), "new\n").unwrap();
            }
            2 => {
                let dir = ws.join(format!("fresh{n}/inner"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("x.txt"), "x\n").unwrap();
            }
            3 => {
                let _ = std::fs::remove_file(&f);
            }
            4 => git_quiet(ws, &["add", "-A"]),
            5 => git_quiet(ws, &["commit", "-qm", "c", "--allow-empty"]),
            6 => git_quiet(ws, &["checkout", "-q", "-f", "-B", &format!("b{}", n % 2)]),
            7 => git_quiet(ws, &["checkout", "-q", "-f", "main"]),
            8 => {
                // A directory renamed out of the workspace: only the directory is reported.
                let dir = ws.join(["src/deep", "docs", "src"][n % 3]);
                let _ = std::fs::rename(&dir, aside.join(format!("gone{n}")));
            }
            9 => {
                let mut text = std::fs::read_to_string(ws.join(".gitignore")).unwrap_or_default();
                text.push_str(["*.log\n", "new*\n", "!new1.txt\n"][n % 3]);
                std::fs::write(ws.join(".gitignore"), text).unwrap();
                std::fs::write(ws.join(format!("out{n}.log")), "log\n").unwrap();
            }
            10 => git_quiet(ws, &["stash", "-q", "-u"]),
            11 => {
                let _ = std::fs::rename(&f, ws.join(format!("moved{n}.txt")));
            }
            _ => git_quiet(ws, &["rm", "-q", "--cached", "-r", files[n % files.len()]]),
        }
    }

    fn repository() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        let aside = tmp.path().join("aside");
        std::fs::create_dir_all(ws.join("src/deep")).unwrap();
        std::fs::create_dir_all(ws.join("docs")).unwrap();
        std::fs::create_dir_all(&aside).unwrap();
        for (name, text) in [
            ("a.txt", "a\n"),
            ("src/b.rs", "b\n"),
            ("src/deep/c.rs", "c\n"),
            ("docs/d.md", "d\n"),
        ] {
            std::fs::write(ws.join(name), text).unwrap();
        }
        git(&ws, &["init", "-q", "-b", "main"]);
        git(&ws, &["add", "-A"]);
        git(&ws, &["commit", "-qm", "one"]);
        (tmp, ws, aside)
    }

    /// The brief's sequence, one step at a time: each capture equals a full one, and the
    /// edits and new files are captured from their own paths (no whole-tree status).
    #[test]
    fn incremental_capture_follows_edits_adds_commits_and_branch_switches() {
        let (_tmp, ws, aside) = repository();
        let mut cache = GitCache::default();
        let (first, how) = capture_incremental(&ws, &mut cache, None);
        assert_eq!((first, how), (capture(&ws), Capture::Full));
        let steps: [(u8, usize, &str); 9] = [
            (0, 1, "paths"), // edit src/b.rs
            (1, 2, "paths"), // a new untracked file in src/deep
            (2, 3, "paths"), // a new untracked directory
            (4, 0, "full"),  // git add -A
            (5, 0, "full"),  // commit
            (0, 0, "paths"), // edit a.txt
            (6, 1, "full"),  // switch to a new branch
            (8, 0, "paths"), // src/deep renamed away
            (7, 0, "full"),  // back to main
        ];
        let mut before = snapshot(&ws);
        for (op, n, expected) in steps {
            apply(&ws, &aside, op, n);
            let after = snapshot(&ws);
            let changed = changed_between(&before, &after);
            before = after;
            let (state, how) = capture_incremental(&ws, &mut cache, Some(&changed));
            assert_eq!(state, capture(&ws), "after op {op} ({changed:?})");
            let kind = match how {
                Capture::Full => "full",
                Capture::Paths(_) => "paths",
                Capture::Reused => "reused",
            };
            assert_eq!(kind, expected, "op {op} ({changed:?})");
        }
        // Nothing changed: the previous result, without a status.
        let (state, how) = capture_incremental(&ws, &mut cache, Some(&BTreeSet::new()));
        assert_eq!((state, how), (capture(&ws), Capture::Reused));
        // An unknown change set (a rescan): a full capture.
        assert_eq!(capture_incremental(&ws, &mut cache, None).1, Capture::Full);
    }

    /// A worktree's `.git` is a file naming a git dir elsewhere, whose changes the
    /// workspace's tracker cannot see: every capture is a full one.
    #[test]
    fn a_git_dir_outside_the_workspace_is_always_captured_whole() {
        let (tmp, ws, _aside) = repository();
        let linked = tmp.path().join("linked");
        git(&ws, &["worktree", "add", "-q", linked.to_str().unwrap()]);
        let mut cache = GitCache::default();
        let _ = capture_incremental(&linked, &mut cache, None);
        std::fs::write(linked.join("a.txt"), "changed\n").unwrap();
        let changed = BTreeSet::from([PathBuf::from("a.txt")]);
        let (state, how) = capture_incremental(&linked, &mut cache, Some(&changed));
        assert_eq!((state, how), (capture(&linked), Capture::Full));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 24, failure_persistence: None, ..Default::default()
        })]
        /// Over any sequence of edits, new files and directories, deletions, renames,
        /// `.gitignore` changes, adds, commits, stashes and branch switches, with the
        /// change set the tracker would report, the incremental capture equals a full one.
        #[test]
        fn incremental_capture_equals_a_full_one(
            ops in proptest::collection::vec((0u8..13, 0usize..6), 1..14)
        ) {
            let (_tmp, ws, aside) = repository();
            let mut cache = GitCache::default();
            let _ = capture_incremental(&ws, &mut cache, None);
            let mut before = snapshot(&ws);
            for (op, n) in ops {
                apply(&ws, &aside, op, n);
                let after = snapshot(&ws);
                let changed = changed_between(&before, &after);
                before = after;
                let (state, _) = capture_incremental(&ws, &mut cache, Some(&changed));
                proptest::prop_assert_eq!(state, capture(&ws), "after op {} {}: {:?}", op, n, changed);
            }
        }
    }
}
